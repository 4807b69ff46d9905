"""Brain-MRI tumour classifier: the Streamlit app (``streamlit run streamlit_app.py``).

This file sets the page frame (settings and the research-use banner) and the navigation;
each page lives in ``pages/``.
"""

from __future__ import annotations

import streamlit as st

from app.frame import app_pages, banner, mark_framed, page_config

page_config()
navigation = st.navigation(app_pages())
banner()
mark_framed()
navigation.run()
