"""Take a pruned variant out of PruneLens: standard checkpoints (HF, compressed-tensors) and a model card."""
