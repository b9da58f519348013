"""PruneLens dashboard: a Streamlit app that draws what the backend returns, over HTTP only.

Nothing in this package imports torch or the backend (except ``frontend.commands``, the CLI
wiring of ``prunelens demo``), so the dashboard runs on a laptop against a GPU server.
"""
