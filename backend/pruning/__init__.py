"""Pruning: one module per method (pure functions on tensors) and the layer-sequential engine."""
