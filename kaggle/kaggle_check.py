"""Run the Kaggle notebook in an environment built the way Kaggle's GPU image is, before Kaggle does.

    python kaggle/kaggle_check.py [--python PYTHON3.12] [--venv .venv-kaggle] [--weights-dir runs/demo/weights]
        [--out runs/kaggle-check]          (make kaggle-check)

1. A second virtual environment from the machine's Python 3.12 with Kaggle's own torch and torchvision
   (2.10 / 0.25, frozen from the Colab base of Kaggle's 2026-08 image) and the other packages the image
   has (``KAGGLE_IMAGE_PACKAGES``), but none of what it lacks (ultralytics, ensemble-boxes, the DICOM
   codecs). Made once; remade when its Python or torch differ.
2. The wheels dataset exactly as ``make_datasets.py`` writes it (for Python 3.11 and 3.12; both must
   resolve offline), downloaded once into ``--out/wheels``.
3. A synthetic competition folder and the weights (``--weights-dir``, by default the demo's when
   ``make demo`` has run, else randomly initialised models of the demo config).
4. The notebook executed headless in that environment (its first cells install the missing packages
   offline from the wheels, as on Kaggle) and its submission compared with what
   ``infer/make_submission.py`` writes here: the same rows and labels, the same confidences and boxes
   to float rounding (another torch).

Writes ``--out/kaggle_check.json`` and ``.md`` (date, versions, what the notebook installed, the
comparison) and exits 1 when any step fails. Too heavy for CI (a 3 GB torch); run it before a push and
whenever Kaggle's image changes (then update the versions below).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KAGGLE_PYTHON = "3.12"
KAGGLE_TORCH = ("torch==2.10.0", "torchvision==0.25.0")
# What Kaggle's GPU image has that the notebook uses (versions: the newest that resolve, as the image's
# are not published per package); what it lacks comes from the wheels dataset.
KAGGLE_IMAGE_PACKAGES = ("numpy<2.3", "pandas", "scikit-learn", "scipy", "opencv-python", "opencv-python-headless",
                         "albumentations", "pydantic", "pydicom", "timm", "matplotlib", "pillow", "pyyaml", "tqdm",
                         "psutil", "requests", "polars", "ipykernel", "nbclient", "nbformat")
WHEEL_PYTHONS = ("3.11", "3.12")
REPORTED_PACKAGES = ("numpy", "pandas", "opencv-python", "albumentations", "pydicom", "timm", "scikit-learn")


def default_python() -> str:
    found = sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / f"{KAGGLE_PYTHON}*" / "bin" /
                                 f"python{KAGGLE_PYTHON}")))
    return found[-1] if found else f"python{KAGGLE_PYTHON}"


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in command), flush=True)
    return subprocess.run([str(c) for c in command], check=True, **kwargs)


def venv_versions(venv: Path) -> dict:
    """Python, torch and torchvision of ``venv`` (empty when it cannot run them)."""
    python = venv / "bin" / "python"
    if not python.is_file():
        return {}
    result = subprocess.run([python, "-c", "import json, platform, torch, torchvision; print(json.dumps({"
                             "'python': platform.python_version(), 'torch': torch.__version__, "
                             "'torchvision': torchvision.__version__}))"], capture_output=True, text=True)
    if result.returncode != 0:
        return {}
    versions = json.loads(result.stdout)
    listed = subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True)
    if listed.returncode == 0:
        installed = {p["name"].lower(): p["version"] for p in json.loads(listed.stdout)}
        versions["packages"] = {name: installed.get(name) for name in REPORTED_PACKAGES}
    return versions


def build_venv(python: str, venv: Path) -> dict:
    """The Kaggle-like environment (kept when its Python and torch already match)."""
    wanted_torch = KAGGLE_TORCH[0].split("==")[1]
    versions = venv_versions(venv)
    if not (versions.get("python", "").startswith(KAGGLE_PYTHON)
            and versions.get("torch", "").startswith(wanted_torch)):
        _run([python, "-m", "venv", "--clear", venv])
        _run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", *KAGGLE_TORCH])
    # Kaggle's image has none of these: a leftover from an earlier check must not hide a missing wheel.
    _run([venv / "bin" / "python", "-m", "pip", "uninstall", "--quiet", "--yes", "ultralytics", "ensemble-boxes",
          "numba", "llvmlite", "python-gdcm", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"],
         capture_output=True)
    _run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", *KAGGLE_TORCH, *KAGGLE_IMAGE_PACKAGES])
    return venv_versions(venv)


def build_wheels(out: Path) -> Path:
    """The wheels dataset for every Python of ``WHEEL_PYTHONS`` (pip skips files already there), checked offline."""
    sys.path.insert(0, str(ROOT / "kaggle"))
    from make_datasets import check_wheels, wheels_dataset

    wheels_dataset(out, "kaggle-check", WHEEL_PYTHONS, "2.35")
    problems = check_wheels(out, WHEEL_PYTHONS, "2.35")
    if problems:
        raise SystemExit(f"{out}: " + "; ".join(f"Python {v}: {text}" for v, text in problems.items()))
    return out


def version_problems(venv: dict, notebook_text: str) -> list[str]:
    """Where the environment that was built, or the one the notebook says it ran in, is not the Kaggle
    image's Python and torch this check claims (``KAGGLE_PYTHON``, ``KAGGLE_TORCH``)."""
    from utils.core.kaggle_runtime import parse_runtime_line

    wanted = {"python": KAGGLE_PYTHON, **dict(pin.split("==") for pin in KAGGLE_TORCH)}
    problems = []
    for where, found in (("the built environment", venv), ("the notebook's runtime line", parse_runtime_line(
            notebook_text))):
        for name, version in wanted.items():
            value = str(found.get(name) or "")
            # torch's version may carry a local build tag (2.10.0+cu128); Python's a patch level
            if not (value == version or value.startswith(version + ".") or value.startswith(version + "+")):
                problems.append(f"{where}: {name} {value or 'unknown'}, expected {version}")
    return problems


def competition_and_weights(out: Path, weights_dir: Path | None) -> tuple[Path, Path, str]:
    from utils.benchmarking.benchmarks import write_untrained_weights
    from utils.data.synthetic import make_siim_dataset

    data = out / "data"
    if not (data / "sample_submission.csv").is_file():
        make_siim_dataset(data, train_studies=4, test_studies=12, seed=7, max_size=256, progress=False)
    demo = ROOT / "runs" / "demo" / "weights"
    if weights_dir is None and (demo / "manifest.json").is_file():
        weights_dir = demo
    if weights_dir is not None:
        return data, weights_dir, f"trained weights from {weights_dir}"
    untrained = out / "untrained_weights"
    if not (untrained / "manifest.json").is_file():
        write_untrained_weights(untrained, ROOT / "train" / "configs" / "demo.yaml", folds=1,
                                overrides={"ensemble": {"workers": 0}})
    return data, untrained, "randomly initialised models of train/configs/demo.yaml (run make demo for trained ones)"


NOTEBOOK_RUNNER = """
import sys, nbformat, nbclient
notebook = nbformat.read(sys.argv[1], as_version=4)
client = nbclient.NotebookClient(notebook, timeout=1800, kernel_name="python3",
                                 resources={"metadata": {"path": sys.argv[2]}})
client.execute()
nbformat.write(notebook, sys.argv[3])
"""


def run_notebook(venv: Path, data: Path, weights: Path, wheels: Path, out: Path) -> tuple[Path, str, float]:
    """Execute the committed notebook in ``venv``; returns the submission, the cells' text output and seconds."""
    working = out / "working"
    code = out / "code"
    for folder in (working, code):
        shutil.rmtree(folder, ignore_errors=True)
    # this machine's pip settings (PIP_* variables, config files: extra find-links) are not Kaggle's
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env = {**env, "SIIM_DATA_DIR": str(data), "SIIM_WEIGHTS_DIR": str(weights), "SIIM_WHEELS_DIR": str(wheels),
           "SIIM_OUTPUT_DIR": str(working), "SIIM_CODE_DIR": str(code), "PYTHONNOUSERSITE": "1",
           "PIP_CONFIG_FILE": os.devnull}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    executed = out / "inference.executed.ipynb"
    started = time.perf_counter()
    _run([venv / "bin" / "python", "-c", NOTEBOOK_RUNNER, ROOT / "kaggle" / "inference.ipynb", out, executed],
         env=env, cwd=out)
    seconds = time.perf_counter() - started
    notebook = json.loads(executed.read_text())
    text = "".join("".join(o.get("text", "")) if isinstance(o.get("text"), list) else o.get("text", "")
                   for cell in notebook["cells"] for o in cell.get("outputs", []))
    return working / "submission.csv", text, seconds


def compare(submission: Path, expected: Path) -> dict:
    """Row by row: ids, labels, the largest confidence and box differences."""
    import numpy as np
    import pandas as pd

    from utils.data.submission import parse_prediction_string

    a, b = (pd.read_csv(p, keep_default_na=False) for p in (submission, expected))
    result = {"rows": len(a), "expected_rows": len(b), "same_ids": a["id"].tolist() == b["id"].tolist(),
              "same_labels": True, "max_confidence_difference": 0.0, "max_box_difference_px": 0.0}
    if not result["same_ids"]:
        return result
    for x, y in zip(a["PredictionString"], b["PredictionString"]):
        px, py = parse_prediction_string(x), parse_prediction_string(y)
        if [p.label for p in px] != [p.label for p in py]:
            result["same_labels"] = False
            continue
        if px:
            result["max_confidence_difference"] = max(result["max_confidence_difference"], float(np.max(np.abs(
                np.subtract([p.confidence for p in px], [p.confidence for p in py])))))
            result["max_box_difference_px"] = max(result["max_box_difference_px"], float(np.max(np.abs(
                np.subtract([p.box for p in px], [p.box for p in py])))))
    return result


def markdown(report: dict) -> str:
    c = report.get("comparison", {})
    lines = [f"# Kaggle check ({report['date']}): {'PASSED' if report['passed'] else 'FAILED'}", "",
             f"- environment: Python {report['venv'].get('python')}, torch {report['venv'].get('torch')}, "
             f"torchvision {report['venv'].get('torchvision')}, "
             + ", ".join(f"{k} {v}" for k, v in report["venv"].get("packages", {}).items())
             + f" (`{report['venv_path']}`)",
             f"- wheels: `{report['wheels']}`, resolve offline for Python {', '.join(WHEEL_PYTHONS)}",
             f"- weights: {report['weights']}",
             f"- installed by the notebook from the wheels: {report.get('installed', 'n/a')}",
             f"- the notebook ran in {report.get('notebook_seconds', 'n/a')} s",
             f"- against `make_submission.py` here: {c.get('rows')} rows, same ids {c.get('same_ids')}, "
             f"same labels {c.get('same_labels')}, largest confidence difference "
             f"{c.get('max_confidence_difference')}, largest box difference {c.get('max_box_difference_px')} px"]
    if report.get("version_problems"):
        lines += ["", "Not the claimed environment: " + "; ".join(report["version_problems"])]
    if report.get("error"):
        lines += ["", f"Error: {report['error']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from utils.core.config import float_in

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=default_python(), help="Python 3.12 interpreter (default: %(default)s)")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-kaggle")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "kaggle-check")
    parser.add_argument("--confidence-tolerance", type=float_in(0.0, 1.0), default=1e-3)
    parser.add_argument("--box-tolerance", type=float_in(0.0, 10_000.0), default=0.5, help="pixels")
    args = parser.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "true")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = {"date": datetime.date.today().isoformat(), "venv_path": str(args.venv), "venv": {}, "passed": False,
              "command": "make kaggle-check"}
    try:
        report["venv"] = build_venv(args.python, args.venv.resolve())
        wheels = build_wheels(out / "wheels")
        report["wheels"] = str(wheels)
        data, weights, report["weights"] = competition_and_weights(out, args.weights_dir)
        from infer import make_submission

        expected = out / "expected.csv"
        make_submission.main(["--data-dir", str(data), "--weights-dir", str(weights), "--out", str(expected),
                              "--no-progress", "--device", "cpu"])
        submission, text, seconds = run_notebook(args.venv.resolve(), data, weights, wheels, out)
        report["notebook_seconds"] = round(seconds, 1)
        report["notebook_output"] = text[-4000:]
        report["installed"] = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                                    if line.startswith("installed:")), "n/a")
        report["version_problems"] = version_problems(report["venv"], text)
        report["comparison"] = c = compare(submission, expected)
        report["passed"] = bool(not report["version_problems"] and c["same_ids"] and c["same_labels"]
                                and c["max_confidence_difference"] <= args.confidence_tolerance
                                and c["max_box_difference_px"] <= args.box_tolerance)
    except (subprocess.CalledProcessError, SystemExit, FileNotFoundError) as err:
        report["error"] = str(err)
    from utils.core.files import write_json_atomic, write_text_atomic

    write_json_atomic(out / "kaggle_check.json", report)
    write_text_atomic(out / "kaggle_check.md", markdown(report))
    print(markdown(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
