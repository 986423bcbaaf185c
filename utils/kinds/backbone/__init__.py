"""Model kind ``backbone``: a trunk fine-tuned on NIH ChestX-ray14's 14 findings, the pretraining every
kind with ``trunk_from_backbone`` starts from (``backbone=OUT/backbone/best.pt``).

A pretraining kind (:class:`utils.kinds.base.PretrainingKind`): trained once, on data of its own, before
the fold-trained kinds; no folds, no member, no manifest entry (nothing of it is predicted at test
time). ``config`` and ``network`` import nothing of training; ``training`` (the kind, registered in
:mod:`utils.kinds.registry`) imports everything. This file imports nothing."""
