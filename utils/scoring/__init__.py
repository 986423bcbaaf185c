"""Scoring: the competition metric and the evaluation of classifiers and detectors against it."""
