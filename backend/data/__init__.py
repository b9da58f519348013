"""Text data: named calibration/held-out/labelled sets (sources.py) and the token windows cut from them (windows.py)."""
