"""Training: the one loop for every torch model (checkpoints, EMA, DDP, logs) and the command line the
training scripts share."""
