"""Model kind ``yolo``: ultralytics YOLO, trained by ultralytics' own trainer behind the kind's train_fold.

``config`` (its config section's schema) and ``network`` import nothing of training; ``member`` (what
the predictor loads) imports them; ``training`` (the kind, registered in :mod:`utils.kinds.registry`)
imports everything. This file imports nothing, so the predictor can load the member alone."""
