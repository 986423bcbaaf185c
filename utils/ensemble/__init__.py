"""From model outputs to one prediction per image: the weights manifest, box fusion and the none blending."""
