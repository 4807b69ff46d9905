"""The frame shared by every page of the app: page settings and the research-use banner.

``streamlit_app.py`` draws the frame before it runs the selected page. A page opened
directly by its address on a freshly started server runs without the main script, under
Streamlit's legacy ``pages/`` navigation (lower-case page names, the main script listed as a
page), until some session has called ``st.navigation``. Each page therefore calls
:func:`ensure_frame`: when the main script did not run, it switches the app to
``st.navigation`` and reruns, so that the main script draws the app's own navigation and
frame and runs the page; it draws the frame itself if that still did not happen (a page run
on its own, as in tests).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

__all__ = ["BANNER", "app_pages", "banner", "ensure_frame", "mark_framed", "page_config"]

BANNER = "Research demonstration — not for diagnostic use"
_FRAMED_KEY = "_app_framed"
_REROUTED_KEY = "_app_rerouted"
_ROOT = Path(__file__).resolve().parent.parent


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


def app_pages() -> list:
    """The app's pages, in navigation order (``streamlit_app.py`` passes them to ``st.navigation``)."""
    return [
        st.Page(_ROOT / "pages" / "scan_review.py", title="Scan review", icon=":material/radiology:", default=True),
        st.Page(_ROOT / "pages" / "model_performance.py", title="Model performance", icon=":material/monitoring:"),
    ]


def ensure_frame() -> None:
    """Draw the frame unless the main script already did in this run; under Streamlit's legacy
    ``pages/`` navigation, rerun once through the main script instead."""
    if st.session_state.pop(_FRAMED_KEY, False):
        return
    if not st.session_state.get(_REROUTED_KEY):
        st.session_state[_REROUTED_KEY] = True
        # Calling st.navigation switches every session of the app away from the pages/
        # directory (Streamlit's documented behaviour); with the app's own pages the address
        # still names this page, and the rerun runs the main script.
        st.navigation(app_pages(), position="hidden")
        st.rerun()
    page_config()
    banner()
