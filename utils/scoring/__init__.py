"""Scoring and measuring: the competition metric, the out-of-fold evaluation of each kind and of the
ensemble, the calibration of the ensemble's settings, the trivial baselines, and the speed benchmarks."""
