"""Every setting of every config section: its default, type and range, and what it does; or what a
recipe resolves to. The defaults and their documentation are declared once, in each section's dataclass
(``utils/pipeline/settings.py`` lists the sections); a recipe (``train/configs/*.yaml``) holds only what
differs from them.

    python train/settings.py [--section study ...]              every key: default, type and range, meaning
    python train/settings.py --config train/configs/real256.yaml [--set study.epochs=2 ...]
                                                                 every key as that recipe resolves it, the
                                                                 ones that differ from the default marked *
    python train/settings.py --write-reference                  regenerate docs/reference.md's "Settings"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.core.config import ConfigError
from utils.pipeline.settings import REFERENCE, SCHEMAS, reference_text, resolved_lines, write_reference


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", nargs="+", choices=list(SCHEMAS), default=None, help="only these sections")
    parser.add_argument("--config", type=Path, default=None, help="show what this recipe resolves every key to")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="with --config: overrides, as train_all.py takes them")
    parser.add_argument("--write-reference", action="store_true", help=f"regenerate the settings in {REFERENCE}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.write_reference:
        print(f"wrote {write_reference()}")
        return 0
    try:
        text = "\n".join(resolved_lines(args.config, args.overrides, args.section)) if args.config \
            else reference_text(args.section)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
