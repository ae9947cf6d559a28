"""smoothinf.models."""
