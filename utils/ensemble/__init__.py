"""From model outputs to one prediction per image and the submission: the weights manifest, box fusion and
the none blending, and the submission assembled from them. The predictor that runs the members is
:mod:`utils.prediction`'s."""
