"""Text data: named calibration/held-out/labelled sets (sources.py, the registry over
offline_sets, hub_sets and user_files) and the token windows cut from them (windows.py)."""
