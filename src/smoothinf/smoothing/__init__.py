"""smoothinf.smoothing."""
