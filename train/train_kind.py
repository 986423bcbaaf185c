"""Train a registered model kind on the prepared SIIM images, one model per fold: the one training
script of every kind (the built-in ones, ``utils/kinds/<name>/``, and those of the ``siim_covid.kinds``
entry points), and the stage command ``train/train_all.py`` runs for each.

    python train/train_kind.py --kind NAME --prepared runs/prepared/meta.csv --out runs/NAME
        [--config train/configs/full.yaml] [--set KEY=VALUE ...] [--weights-dir runs/weights] [--resume]
        [--start-from WEIGHTS_DIR]

Writes what every kind writes (:func:`utils.kinds.base.train_folds`): config.yaml, the folds' run
folders, oof_predictions.csv and the kind's out-of-fold report; registers the fold weights in
--weights-dir/manifest.json. ``--kind NAME --help`` adds what that kind does and writes; each option of
its own is a key of its config section (``--set``). Multi-GPU (the torch kinds):
``torchrun --nproc_per_node N train/train_kind.py --kind NAME ...``.
"""

from __future__ import annotations

import argparse
import sys

from utils.kinds.registry import KINDS
from utils.pipeline.cli import kind_parser, run_kind


def get_args_parser(kind=None) -> argparse.ArgumentParser:
    """The command line of ``kind`` (``--resume`` only for an engine kind, ``--start-from`` for those that
    can) plus ``--kind``; without a kind, the first kind's options (what --help alone shows)."""
    parser = kind_parser(kind or next(iter(KINDS.values())), __doc__, f"runs/{kind.name if kind else 'KIND'}",
                         describe_kind=kind is not None)
    parser.add_argument("--kind", required=True, choices=sorted(KINDS), help="the kind's name (its config section)")
    return parser


def main(argv: list[str] | None = None) -> int:
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--kind", choices=sorted(KINDS))
    known, _ = first.parse_known_args(argv)
    kind = KINDS.get(known.kind)
    parser = get_args_parser(kind)
    if kind is None:
        parser.parse_args(argv)  # --help, or the error of a missing or unknown --kind
    return run_kind(kind, __doc__, f"runs/{kind.name}", argv, parser=parser)


if __name__ == "__main__":
    sys.exit(main())
