"""Predicting with a weights folder: the one predictor over every member its manifest lists
(predictor.py) and the same on several devices at once (sharding.py)."""
