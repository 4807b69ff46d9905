"""The Streamlit app's own helpers, beside ``pages/``: the page frame (configuration, banner),
figures (plotly), heatmap overlays, the scan-review state and the rows of the
model-performance tables. The inference library is ``core``, which imports none of this."""
