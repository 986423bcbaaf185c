"""Command-line pieces shared by the training scripts (config file, overrides, resume, logging) and the one
way a kind is trained from a command line (:func:`run_kind`: ``train/train_kind.py``; :func:`train_kind`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.core.config import DEFAULT_CONFIG
from utils.core.log import configure_logging  # noqa: F401 - the scripts import it from here


def add_run_arguments(parser: argparse.ArgumentParser, section: str, default_out: str, resume: bool = True) -> None:
    """``--out``, ``--config``, ``--set KEY=VALUE ...``, ``--resume`` (unless ``resume`` is False: a
    trainer without the engine's exact resume) and ``--no-progress``."""
    parser.add_argument("--out", type=Path, default=Path(default_out), help="run folder")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help=f"YAML with a '{section}' section (default: train/configs/full.yaml)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set epochs=2 image_size=128")
    if resume:
        parser.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def kind_doc(kind) -> str:
    """What the kind's training module says of it (its command, what it writes): the help's second part."""
    return sys.modules[type(kind).__module__].__doc__ or kind.title


def kind_parser(kind, doc: str, default_out: str, describe_kind: bool = True) -> argparse.ArgumentParser:
    """The command line every model kind shares; its help is ``doc``, then (``describe_kind``) the kind's
    own description."""
    description = f"{doc}\n{kind.name}: {kind_doc(kind)}" if describe_kind else doc
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, type=Path, help="meta.csv written by train/prepare.py")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="where to export the fold weights and register them in manifest.json")
    if kind.can_start_from:
        parser.add_argument("--start-from", type=Path, default=None, metavar="WEIGHTS_DIR",
                            help="each fold starts from this weights folder's weights of the same model and fold "
                                 "(fine-tuning, e.g. round two from round one), instead of the config's starting trunk")
    add_run_arguments(parser, kind.name, default_out, resume=kind.resumable)
    return parser


def run_kind(kind, doc: str, default_out: str, argv: list[str] | None = None,
             parser: argparse.ArgumentParser | None = None) -> int:
    """The training script's body: parse, load the kind's config section, train every fold
    (:func:`utils.kinds.train_folds`). Config and data problems exit with the message, not a traceback."""
    from utils.core.config import ConfigError, load_section, parse_overrides
    from utils.core.files import describe_write_failure, is_write_failure
    from utils.kinds.registry import RunOptions, TrainingError, train_folds
    from utils.nets.models import WeightsError
    from utils.training.checkpoints import CheckpointError

    args = (parser or kind_parser(kind, doc, default_out)).parse_args(argv)
    configure_logging()
    try:
        config = load_section(args.config, kind.name, kind.config_class, parse_overrides(args.overrides))
        options = RunOptions(prepared=args.prepared, out=args.out, weights_dir=args.weights_dir,
                             resume=getattr(args, "resume", False), progress=not args.no_progress,
                             start_from=getattr(args, "start_from", None))
        train_folds(kind, config, options)
    except (ConfigError, TrainingError, CheckpointError, WeightsError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    except OSError as err:  # the destination's fault (a full disk): checkpoints and manifests written stay whole
        if not is_write_failure(err):
            raise
        raise SystemExit(f"error: {describe_write_failure(err)}; what was written before stays whole: make "
                         "room and run it again with --resume") from None
    return 0


def train_kind(name: str, argv: list[str]) -> int:
    """Train registered kind ``name`` from the training script's command line ``argv`` without
    ``--kind``: how the ablation and fold-averaging tools train, without importing a script."""
    from utils.kinds.registry import KINDS

    return run_kind(KINDS[name], f"train the {name} kind", f"runs/{name}", argv)
