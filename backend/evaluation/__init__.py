"""Evaluation: lm-evaluation-harness tasks (ours and its own), the runner, the results store,
the paper's tables and sweeps over models x methods x calibration sets x sparsities."""
