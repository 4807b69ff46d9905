"""Brain-MRI tumour classifier: the Streamlit app (``streamlit run streamlit_app.py``).

This file sets the page frame and the navigation; each page lives in ``pages/``.
"""

from __future__ import annotations

import streamlit as st

BANNER = "Research demonstration — not for diagnostic use"

st.set_page_config(
    page_title="Brain MRI tumour classifier",
    page_icon=":material/neurology:",
    layout="wide",
    initial_sidebar_state="expanded",
)

navigation = st.navigation(
    [
        st.Page("pages/scan_review.py", title="Scan review", icon=":material/radiology:", default=True),
        st.Page("pages/model_performance.py", title="Model performance", icon=":material/monitoring:"),
    ]
)
st.warning(
    f"**{BANNER}.** Predictions from single 2D slices; not clinically validated.",
    icon=":material/science:",
)
with st.sidebar:
    st.caption(BANNER)
navigation.run()
