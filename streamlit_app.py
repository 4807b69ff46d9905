"""Brain-MRI tumour classifier: the Streamlit app (``streamlit run streamlit_app.py``).

This file sets the page frame (settings and the research-use banner) and the navigation;
each page lives in ``pages/``.
"""

from __future__ import annotations

import streamlit as st

from app.frame import banner, mark_framed, page_config

page_config()
navigation = st.navigation(
    [
        st.Page("pages/scan_review.py", title="Scan review", icon=":material/radiology:", default=True),
        st.Page("pages/model_performance.py", title="Model performance", icon=":material/monitoring:"),
    ]
)
banner()
mark_framed()
navigation.run()
