"""smoothinf.evaluation."""
