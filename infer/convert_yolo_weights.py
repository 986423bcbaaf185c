"""Convert YOLO weights saved before 2026-12 (ultralytics' pickled ``.pt``) into the data-only format the
predictor loads (model yaml + state dict, read with ``weights_only=True``), in place.

Converting unpickles each file, which runs any code inside it: convert only files you trust (your own
training runs). Every other loader of this project refuses such files and names this command.

    python infer/convert_yolo_weights.py runs/full/weights            # every YOLO file of the manifest
    python infer/convert_yolo_weights.py runs/full/weights/yolo/fold0.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.ensemble.manifest import MANIFEST_FILE, read_manifest
from utils.kinds.yolo.member import YoloMember
from utils.kinds.yolo.network import (
    YoloWeightsError,
    convert_ultralytics_pickle,
    default_settings_dir,
    import_ultralytics,
)


def yolo_files(target: Path) -> list[Path]:
    """``target`` itself, or every file of the ``yolo`` models a weights folder's manifest lists."""
    if not (target / MANIFEST_FILE).is_file():
        return [target]
    manifest = read_manifest(target, must_exist=True)
    return [target / relative for spec in manifest["models"].values() if spec.get("kind") == YoloMember.kind
            for relative in spec["files"].values()]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", type=Path, help="weights folders or YOLO .pt files")
    return parser


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    import_ultralytics(default_settings_dir())
    failed = 0
    for path in (p for target in args.targets for p in yolo_files(target)):
        try:
            convert_ultralytics_pickle(path)
            print(f"{path}: converted")
        except (YoloWeightsError, OSError) as err:
            print(err)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
