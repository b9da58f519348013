"""The pruning methods, one module each (math, options, ``METHOD``); the engine lives one floor up."""
