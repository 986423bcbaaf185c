"""Scoring: the competition metric, the out-of-fold evaluation of each kind and of the ensemble, the
calibration of the ensemble's settings on those scores, and the trivial baselines. Speed is
:mod:`utils.benchmarking`'s."""
