"""Training: the one loop for every torch model (loop.py) and its parts, one job per module
(checkpoints, distributed, loaders, ema, history), and the command line the training scripts share (cli.py)."""
