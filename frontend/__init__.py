"""PruneLens dashboard: a Streamlit app that draws what the backend returns, over HTTP only.

Nothing in this package imports torch or the backend (the import contract of ``make lint``
checks it), so the dashboard runs on a laptop against a GPU server. Its command-line entries
(``prunelens demo``, ``prunelens figure``) live with the backend's commands, which may use it.
"""
