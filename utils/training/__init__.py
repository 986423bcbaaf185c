"""Training: the one loop for every torch model (loop.py) and its parts, one job per module
(checkpoints, distributed, loaders, ema, history), the command line the training scripts share (cli.py),
and the whole pipeline's stages that train/train_all.py runs (pipeline.py)."""
