"""Prepare the folders `make kaggle-push` uploads: the weights dataset, the wheels dataset and the kernel.

    python kaggle/make_datasets.py --weights-dir runs/full/weights --out runs/kaggle [--owner USER]
        [--no-wheels] [--python-version 3.12 [3.11 ...]] [--glibc 2.35]
    python kaggle/make_datasets.py --check-wheels runs/kaggle/wheels [--python-version 3.11 3.12]

Writes under --out:

    weights/  every file of the weights folder, flat (``frcnn/fold0.pt`` -> ``frcnn__fold0.pt``,
              the manifest's paths rewritten to match: Kaggle's upload keeps no subfolders) and
              dataset-metadata.json
    wheels/   the packages Kaggle's image lacks, as binary wheels for Kaggle's Python and platform
              (``pip download --only-binary=:all: --no-deps``, once per --python-version into the same
              folder: the notebook's offline ``pip install`` picks the files matching its Python), then
              checked: every package must resolve offline from the folder for every version, else the
              command fails naming what is missing (here, not on Kaggle); and dataset-metadata.json
    kernel/   inference.ipynb (built from the current sources) and kernel-metadata.json: GPU on,
              internet off, the competition and both datasets as sources

The owner is --owner, else $KAGGLE_USERNAME, else the username in ~/.kaggle/kaggle.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from utils.core.files import atomic_folder, describe_write_failure, is_write_failure

ROOT = Path(__file__).resolve().parent.parent
COMPETITION = "siim-covid19-detection"
WEIGHTS_SLUG = "siim-covid19-pipeline-weights"
WHEELS_SLUG = "siim-covid19-pipeline-wheels"
KERNEL_SLUG = "siim-covid19-pipeline-inference"
# What Kaggle's GPU image lacks (it has torch, torchvision, opencv, pandas, scikit-learn, matplotlib, pydicom,
# timm, albumentations with pydantic, ...): the pinned versions of requirements.txt plus ultralytics-thop, the one
# ultralytics dependency it lacks for prediction. Carried in case the image has them too old or not at
# all (installed only then): pydicom (the reader needs 3.x) and numba with llvmlite (ensemble-boxes
# imports numba; `make kaggle-check` failed on its absence).
WHEEL_PACKAGES = ("ensemble-boxes", "numba", "llvmlite", "pydicom", "python-gdcm", "pylibjpeg", "pylibjpeg-libjpeg",
                  "pylibjpeg-openjpeg", "pylibjpeg-rle", "ultralytics", "ultralytics-thop")
# Kaggle's GPU image (Kaggle/docker-python, 2026-08, on the Colab runtime of May 2026) runs Python 3.12;
# 3.11 is the previous image's.
DEFAULT_PYTHON_VERSIONS = ("3.12",)


def kaggle_owner(explicit: str | None) -> str:
    """The Kaggle username that owns the datasets and the kernel."""
    if explicit:
        return explicit
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    credentials = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    if credentials.is_file():
        return json.loads(credentials.read_text())["username"]
    raise SystemExit("no Kaggle username: pass --owner, set KAGGLE_USERNAME, or put kaggle.json (Kaggle > Settings > "
                     "API > Create New Token) in ~/.kaggle/")


def pinned_requirements(names=WHEEL_PACKAGES, requirements: Path = ROOT / "requirements.txt") -> list[str]:
    """``name==version`` from requirements.txt where it pins the package, else the bare name."""
    pins = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = f"{name.strip()}=={version.strip()}"
    return [pins.get(name.lower(), name) for name in names]


def dataset_metadata(owner: str, slug: str, title: str, licence: str) -> dict:
    return {"title": title, "id": f"{owner}/{slug}", "licenses": [{"name": licence}]}


def flat_name(relative: str) -> str:
    return relative.replace("/", "__")


def weights_dataset(weights_dir: Path, out: Path, owner: str) -> Path:
    """The weights folder flattened, its manifest's file paths rewritten, plus dataset-metadata.json."""
    manifest = json.loads((weights_dir / "manifest.json").read_text())
    # Written beside, then swapped in: a full disk or a kill leaves the previous export whole.
    with atomic_folder(out) as folder:
        for spec in manifest["models"].values():
            for fold, relative in spec["files"].items():
                shutil.copyfile(weights_dir / relative, folder / flat_name(relative))
                spec["files"][fold] = flat_name(relative)
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        metadata = dataset_metadata(owner, WEIGHTS_SLUG, "SIIM COVID-19 pipeline weights", "other")
        (folder / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return out


def linux_platforms(glibc: str) -> list[str]:
    """pip platform tags of an x86_64 Linux with this glibc: wheels are tagged with the oldest glibc
    they need (python-gdcm 2.28, pylibjpeg-libjpeg 2.34), and pip matches tags literally."""
    major, minor = (int(part) for part in glibc.split("."))
    if major != 2 or minor < 17:
        raise SystemExit(f"--glibc {glibc}: expected 2.17 or newer")
    return ["manylinux2014_x86_64", *(f"manylinux_2_{k}_x86_64" for k in range(17, minor + 1)), "any"]


def _target(python_version: str, glibc: str) -> list[str]:
    """pip's options that select wheels for another interpreter: Kaggle's CPython on x86_64 Linux."""
    platforms = [a for tag in linux_platforms(glibc) for a in ("--platform", tag)]
    return ["--only-binary=:all:", "--python-version", python_version, *platforms, "--implementation", "cp"]


def wheel_download_command(out: Path, python_version: str, glibc: str) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(out), *_target(python_version, glibc),
            *pinned_requirements()]


def wheel_check_command(folder: Path, python_version: str, glibc: str, requirements: list[str] | None = None
                        ) -> list[str]:
    """What the notebook's install does (offline, from the folder only, no dependencies: Kaggle's image has
    them), as a dry run for another Python: pip fails when a package has no matching wheel there."""
    return [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--no-index",
            "--no-deps",
            "--find-links", str(folder), *_target(python_version, glibc), "--quiet",
            *(requirements or pinned_requirements())]


def check_wheels(folder: Path, python_versions, glibc: str, requirements: list[str] | None = None) -> dict[str, str]:
    """``{python_version: pip's complaint}`` for every version whose install would fail offline from
    ``folder`` (on failure each requirement is tried alone, so every missing one is named); empty when
    all resolve."""
    if not any(Path(folder).glob("*.whl")):
        return {version: f"{folder}: no wheel files there" for version in python_versions}
    requirements = requirements or pinned_requirements()
    problems = {}
    for version in python_versions:
        all_at_once = subprocess.run(wheel_check_command(folder, version, glibc, requirements), capture_output=True)
        if all_at_once.returncode == 0:
            continue
        failures = []
        for requirement in requirements:  # one by one, to name every missing wheel
            result = subprocess.run(wheel_check_command(folder, version, glibc, [requirement]), capture_output=True,
                                    text=True)
            if result.returncode != 0:
                failures.append(f"{requirement}: no wheel for CPython {version} "
                                f"({_last_error_line(result.stderr)})")
        if failures:
            problems[version] = "; ".join(failures)
    return problems


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip().startswith("ERROR")]
    return lines[0].removeprefix("ERROR: ") if lines else stderr.strip()[-200:]


def wheels_dataset(out: Path, owner: str, python_versions, glibc: str, download: bool = True) -> Path:
    """Download the wheels for every Python version into ``out``, check that they resolve offline for
    each, and write the metadata."""
    out.mkdir(parents=True, exist_ok=True)
    if download:
        for version in python_versions:
            subprocess.run(wheel_download_command(out, version, glibc), check=True)
        problems = check_wheels(out, python_versions, glibc)
        if problems:
            raise SystemExit(f"{out}: the notebook's offline install would fail: " + "; ".join(
                f"Python {version}: {text}" for version, text in problems.items()))
        print(f"{out}: every package resolves offline for Python {', '.join(python_versions)}")
    metadata = dataset_metadata(owner, WHEELS_SLUG, "SIIM COVID-19 pipeline wheels",
                                "other")  # mixed licences: ultralytics AGPL-3.0, pylibjpeg-libjpeg GPL-3.0, ...
    (out / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return out


def kernel_folder(out: Path, owner: str) -> Path:
    """The built notebook and its kernel-metadata.json (from the committed template, owner filled in)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(ROOT / "kaggle" / "build_notebook.py"), "--out", str(out / "inference.ipynb")],
                   check=True)
    template = json.loads((ROOT / "kaggle" / "kernel-metadata.json").read_text())
    metadata = json.loads(json.dumps(template).replace("YOUR_KAGGLE_USERNAME", owner))
    (out / "kernel-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, help="weights folder with manifest.json")
    parser.add_argument("--check-wheels", type=Path, metavar="FOLDER",
                        help="only check that FOLDER's wheels resolve offline for every --python-version")
    parser.add_argument("--out", type=Path, default=Path("runs/kaggle"))
    parser.add_argument("--owner", default=None, help="Kaggle username (default: from the Kaggle credentials)")
    parser.add_argument("--no-wheels", action="store_true", help="write the wheels metadata only, download nothing")
    parser.add_argument("--python-version", nargs="+", default=list(DEFAULT_PYTHON_VERSIONS), dest="python_versions",
                        help="Python(s) of Kaggle's image, e.g. 3.12 (today's) or 3.11 3.12 (default: %(default)s)")
    parser.add_argument("--glibc", default="2.35", help="glibc of Kaggle's image (Ubuntu 22.04: 2.35)")
    args = parser.parse_args(argv)
    if args.check_wheels:
        problems = check_wheels(args.check_wheels, args.python_versions, args.glibc)
        for version, text in problems.items():
            print(f"Python {version}: {text}", file=sys.stderr)
        if not problems:
            print(f"{args.check_wheels}: every package resolves offline for Python {', '.join(args.python_versions)}")
        return 1 if problems else 0
    if args.weights_dir is None:
        parser.error("--weights-dir is required (or --check-wheels FOLDER)")
    if not (args.weights_dir / "manifest.json").is_file():
        raise SystemExit(f"{args.weights_dir / 'manifest.json'}: not found (train first: make train-all)")
    owner = kaggle_owner(args.owner)
    try:
        weights_dataset(args.weights_dir, args.out / "weights", owner)
    except OSError as err:
        if not is_write_failure(err):
            raise
        raise SystemExit(f"error: {describe_write_failure(err)}; the previous {args.out / 'weights'} (if any) is "
                         "left as it was") from None
    wheels_dataset(args.out / "wheels", owner, args.python_versions, args.glibc, download=not args.no_wheels)
    kernel_folder(args.out / "kernel", owner)
    print(f"wrote {args.out}/weights, {args.out}/wheels and {args.out}/kernel for {owner}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
