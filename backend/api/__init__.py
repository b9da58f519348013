"""The HTTP API (FastAPI): models, variants, jobs with progress, NSA and evaluations. Entry: create_app()."""
