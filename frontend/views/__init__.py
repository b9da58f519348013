"""Plain functions that turn backend JSON into HTML, plotly figures and tables (no Streamlit)."""
