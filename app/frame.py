"""The frame shared by every page of the app: page settings and the research-use banner.

``streamlit_app.py`` draws the frame before it runs the selected page. A page opened
directly by its address on a freshly started server can run without the main script
(Streamlit's legacy ``pages/`` mode); each page therefore calls :func:`ensure_frame`, which
draws the frame itself when the main script did not in this run.
"""

from __future__ import annotations

import streamlit as st

__all__ = ["BANNER", "banner", "ensure_frame", "mark_framed", "page_config"]

BANNER = "Research demonstration — not for diagnostic use"
_FRAMED_KEY = "_app_framed"


def page_config() -> None:
    st.set_page_config(
        page_title="Brain MRI tumour classifier",
        page_icon=":material/neurology:",
        layout="wide",
        initial_sidebar_state="expanded",
    )


def banner() -> None:
    """The permanent label: on top of every page, and in the sidebar."""
    st.warning(
        f"**{BANNER}.** Predictions from single 2D slices; not clinically validated.",
        icon=":material/science:",
    )
    st.sidebar.caption(BANNER)


def mark_framed() -> None:
    """Called by the main script once it has drawn the frame for this run."""
    st.session_state[_FRAMED_KEY] = True


def ensure_frame() -> None:
    """Draw the frame unless the main script already did in this run."""
    if not st.session_state.pop(_FRAMED_KEY, False):
        page_config()
        banner()
