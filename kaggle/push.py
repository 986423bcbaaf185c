"""Upload what kaggle/make_datasets.py prepared: both datasets (created, or a new version), then the kernel.

    python kaggle/push.py [runs/kaggle]

Needs the kaggle command-line tool (``pip install kaggle``) and the user's API credentials
(~/.kaggle/kaggle.json, or KAGGLE_USERNAME and KAGGLE_KEY); says so and stops when either is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def credentials_problem() -> str | None:
    if shutil.which("kaggle") is None:
        return "the kaggle command-line tool is not installed: pip install kaggle"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return None
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    if not config.is_file():
        return (f"no Kaggle credentials: put kaggle.json (Kaggle > Settings > API > Create New Token) at {config} "
                "or set KAGGLE_USERNAME and KAGGLE_KEY")
    return None


def push_dataset(folder: Path) -> None:
    slug = json.loads((folder / "dataset-metadata.json").read_text())["id"]
    exists = subprocess.run(["kaggle", "datasets", "status", slug], capture_output=True).returncode == 0
    command = (["kaggle", "datasets", "version", "-p", str(folder), "-m", "update from the pipeline"] if exists
               else ["kaggle", "datasets", "create", "-p", str(folder)])
    print("$", " ".join(command))
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    root = Path((argv if argv is not None else sys.argv[1:])[0] if (argv or sys.argv[1:]) else "runs/kaggle")
    problem = credentials_problem()
    if problem:
        print(f"kaggle-push: {problem}", file=sys.stderr)
        return 2
    for name in ("weights", "wheels", "kernel"):
        if not (root / name).is_dir():
            print(f"kaggle-push: {root / name} missing; run make kaggle-datasets first", file=sys.stderr)
            return 2
    push_dataset(root / "weights")
    push_dataset(root / "wheels")
    print("$ kaggle kernels push -p", root / "kernel")
    subprocess.run(["kaggle", "kernels", "push", "-p", str(root / "kernel")], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
