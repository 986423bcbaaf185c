"""The training engine: the one loop for every torch model (loop.py) and its parts, one job per module
(checkpoints, distributed, loaders, ema, history, and the timing pieces of speed measurements). It knows no
kind: the kinds build on it, and the stages that drive the kinds are :mod:`utils.pipeline`'s."""
