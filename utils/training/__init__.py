"""Training: the one loop for every torch model and its settings."""
