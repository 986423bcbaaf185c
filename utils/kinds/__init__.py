"""The model kinds: one package per kind, under its one name (config section, run folder, manifest entry
and kind, weights subfolder, prediction rows' model):

    utils/kinds/<name>/config.py    its config section's schema            (no training, no torch model)
    utils/kinds/<name>/network.py   its network and how its weights load    (no training)
    utils/kinds/<name>/member.py    what the predictor loads (config + network)
    utils/kinds/<name>/training.py  the kind itself (``KIND``): datasets, fold training, report, manifest

The NIH backbone (``utils/kinds/backbone/``) has the same shape without a member: a pretraining kind,
trained before the others and predicted nowhere (:class:`utils.kinds.base.PretrainingKind`). What they
share: :mod:`utils.kinds.base` (the training protocol and the one fold loop),
:mod:`utils.kinds.member` (the prediction protocol), the registries :mod:`utils.kinds.registry` (the
kinds, for training; imports every kind's training) and :mod:`utils.kinds.members` (the members, for
prediction; imports no training). The kinds' names, for the packages below this one and
the scripts that only read a run's files, are in :mod:`utils.core.kind_names`."""
