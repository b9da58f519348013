"""The neuron index: per-neuron top examples, densities and dense-vs-variant change over a corpus."""
