"""smoothinf.training."""
