"""Studies: a paper's claims as grids of sweep cells and NSA requests, each judged by a test."""
