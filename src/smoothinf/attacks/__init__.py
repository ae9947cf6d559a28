"""smoothinf.attacks."""
