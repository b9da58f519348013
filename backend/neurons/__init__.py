"""The corpus-scale neuron index: top examples, densities and dense-vs-variant change per neuron."""
