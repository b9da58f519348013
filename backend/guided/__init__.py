"""Guided pruning: what combines the other packages — pruning that protects the neurons NSA
selects (protection_sources), calibration advice for a task (advice) and the controlled
protection experiment (protect_experiment), with their commands."""
