"""Model kind ``study``: the study classifier (four study classes and the image none), its auxiliary
opacity segmentation head and test-time views.

``config`` (its config section's schema) and ``network`` import nothing of training; ``member`` (what
the predictor loads) imports them; ``training`` (the kind, registered in :mod:`utils.kinds.registry`)
imports everything. This file imports nothing, so the predictor can load the member alone."""
