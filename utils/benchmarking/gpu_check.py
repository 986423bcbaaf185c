"""The GPU check's parts (``infer/gpu_check.py``, ``make gpu-check``: what each part measures is that
script's help): their commands and time caps, running them each in its own process group within the
budget, the figures each leaves behind, and the table."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from utils.core.files import write_json_atomic, write_text_atomic
from utils.core.report import show_general
from utils.kinds.registry import KINDS

ROOT = Path(__file__).resolve().parents[2]
# The prediction figures first (the open speed work needs them), the real-data recipe last: it
# needs about 6 minutes alone, so it gets what is left, or a call of its own (--parts real256).
PARTS = ("inference", "training", "loop", "epochs", "real256")


def smoke_train_all() -> list[str]:
    """Toy sizes for --smoke: preparation, every registered kind's (its ``toy_overrides``) and the
    ensemble's."""
    return ["prepare.folds=3", "prepare.workers=1",
            *(f"{name}.{key}" for name, kind in KINDS.items() for key in kind.toy_overrides()),
            "ensemble.workers=0", "ensemble.batch_size=4"]


def worker_keys(workers: int) -> list[str]:
    """``SECTION.workers=N`` for preparation, every kind whose config has data workers, and the ensemble."""
    kinds = [name for name, kind in KINDS.items() if "workers" in {f.name for f in fields(kind.config_class)}]
    return [f"{section}.workers={workers}" for section in ("prepare", *kinds, "ensemble")]


def speed_keys(smoke: bool) -> list[str]:
    """Every kind's speed-run keys (:meth:`utils.kinds.base.KindChecks.speed_run_overrides`: no NIH trunk; with
    ``smoke``, the smallest models)."""
    return [f"{name}.{key}" for name, kind in KINDS.items() for key in kind.speed_run_overrides(smoke)]


@dataclass
class Part:
    name: str
    command: list[str]
    cap_s: float
    status: str = "not run"
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)


def _train_all(data: Path, out: Path, config: str, patients: Path | None, keys: list[str],
               to_stage: str = "evaluate", kinds: list[str] | None = None) -> list[str]:
    sets = list(keys) + ([f"prepare.patients={patients}"] if patients else ["prepare.patients=null"])
    return [sys.executable, str(ROOT / "train/train_all.py"), "--data-dir", str(data), "--out", str(out),
            "--config", str(ROOT / config), "--no-progress", "--to-stage", to_stage,
            *(["--kinds", *kinds] if kinds else []), "--set", *sets]


def plan(out: Path, data: Path, patients: Path | None, subset: Path, smoke: bool, workers: int) -> list[Part]:
    """The parts' commands and time caps (seconds)."""
    py = sys.executable
    bench = str(ROOT / "infer/benchmark.py")
    if smoke:
        training = [py, bench, "training", "--arch", "resnet18", "--image-size", "32", "--batch-size", "2",
                    "--steps", "2", "--repeats", "1"]
        inference = [py, bench, "inference", "--config", str(ROOT / "train/configs/real256.yaml"), "--folds", "1",
                     "--images", "2", "--repeats", "1", "--scale", "0.1", "--workers", "0", "--batch-size", "1",
                     "--compare-channels-last"]
        real256_keys = smoke_train_all()
        epoch_keys = smoke_train_all()
        loop = [py, bench, "loop", "--config", str(ROOT / "train/configs/real256.yaml"), "--steps", "2", "--repeats",
                "1", "--set", *smoke_train_all()[2:-2], *speed_keys(smoke)]
    else:
        training = [py, bench, "training"]  # its GPU defaults: ResNeXt-50, 224 px, batch 32, 20 steps x 5
        inference = [py, bench, "inference", "--config", str(ROOT / "train/configs/full.yaml"), "--folds", "5",
                     "--images", "32", "--repeats", "1", "--workers", str(workers), "--compare-channels-last"]
        real256_keys = worker_keys(workers)
        epoch_keys = worker_keys(workers) + ["prepare.folds=5"]
        # The GPU recipe's loops, each beside itself channels-last: is a GPU loop input-bound, and does NHWC pay?
        loop = [py, bench, "loop", "--config", str(ROOT / "train/configs/full.yaml"), "--steps", "10", "--repeats", "2",
                "--set", *worker_keys(workers)[1:-1], *speed_keys(smoke), "--variant", "channels_last",
                *(f"{name}.channels_last=true" for name in ("study", "frcnn", "yolo"))]
    # One fold, one epoch of each kind (the smallest model in the smoke), no NIH trunk: speed does not depend on it.
    epoch_keys = epoch_keys + speed_keys(smoke)
    caps = {"inference": 180, "training": 60, "loop": 150, "epochs": 100, "real256": 420} if not smoke else \
        {"inference": 120, "training": 120, "loop": 300, "epochs": 300, "real256": 300}
    return [
        Part("inference", inference + ["--out", str(out / "inference.json")], caps["inference"]),
        Part("training", training + ["--out", str(out / "training.json")], caps["training"]),
        Part("loop", loop + ["--data-dir", str(subset), *(["--patients", str(patients)] if patients else []),
                             "--out", str(out / "loop.json")], caps["loop"]),
        # one epoch of each model, no CV report: its figures are the epochs' speed and memory; the smoke
        # trains only the first kind there (real256's toy run has every kind's first epoch: a stage costs
        # the suite about 13 s)
        Part("epochs", _train_all(subset, out / "epochs", "train/configs/full.yaml", patients, epoch_keys,
                                  to_stage=list(KINDS)[-1], kinds=list(KINDS)[:1] if smoke else None),
             caps["epochs"]),
        Part("real256", _train_all(data, out / "real256", "train/configs/real256.yaml", patients, real256_keys),
             caps["real256"]),
    ]


def _number(value, digits: int = 3):
    try:
        return round(float(value), digits)
    except (TypeError, ValueError):
        return None


def _run_figures(run: Path) -> dict:
    """Stage times and the CV report of a train_all run folder."""
    figures = {}
    stages = run / "train_all.json"
    if stages.is_file():
        figures["stage_seconds"] = {k: v.get("seconds") for k, v in json.loads(stages.read_text()).items()
                                    if isinstance(v, dict) and "seconds" in v}
    report = run / "report" / "cv_report.json"
    if report.is_file():
        cv = json.loads(report.read_text())
        figures["cv"] = {label: {"map": _number(cv[label].get("map")), "study_map": _number(cv[label].get("study_map")),
                                 "opacity_ap": _number(cv[label].get("ap", {}).get("opacity"))}
                         for label in ("ensemble", "baseline_prior", "baseline_prior_fixed_boxes") if label in cv}
        figures["cv"]["models"] = {name: {k: _number(v) for k, v in scores.items() if isinstance(v, (int, float))}
                                   for name, scores in cv.get("models", {}).items()}
    return figures


def collect(part: Part, out: Path) -> dict:
    """The figures a finished (or stopped) part left behind."""
    if part.name in ("training", "inference", "loop"):
        path = out / f"{part.name}.json"
        return json.loads(path.read_text()) if path.is_file() else {}
    run = out / part.name
    figures = _run_figures(run)
    figures["first_epochs"] = {name: kind.first_epoch_figures(run / name) for name, kind in KINDS.items()}
    return figures


def run_parts(parts: list[Part], out: Path, budget_s: float, env: dict) -> None:
    started = time.perf_counter()
    for part in parts:
        left = budget_s - (time.perf_counter() - started)
        if left < 10:
            part.status = f"did not fit: {left:.0f} s of the {budget_s:.0f} s budget left"
            continue
        cap = min(part.cap_s, left)
        print(f"== {part.name} (cap {cap:.0f} s): {' '.join(part.command[1:4])} ...", flush=True)
        begin = time.perf_counter()
        with open(out / f"{part.name}.log", "w") as log:
            # Its own process group, so that a stopped part takes its stage scripts and loaders with it.
            process = subprocess.Popen(part.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=cap)
                part.status = "ok" if code == 0 else f"failed (exit {code}, see {part.name}.log)"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                part.status = f"did not fit: stopped at its {cap:.0f} s cap (partial figures)"
        part.seconds = round(time.perf_counter() - begin, 1)
        part.figures = collect(part, out)
        print(f"   {part.status} in {part.seconds} s", flush=True)


def markdown(result: dict) -> str:
    """The table of every figure, one row per measurement."""
    lines = [f"GPU check on {result['device']} (torch {result['torch']}, {result['date']}; "
             f"{'SMOKE, toy sizes' if result['smoke'] else 'full sizes'}; {result['seconds']} s in all)", "",
             "| part | figure | value |", "| --- | --- | --- |"]
    for part in result["parts"]:
        figures, name = part["figures"], part["name"]
        lines.append(f"| {name} | status | {part['status']} ({part['seconds']} s) |")
        if name == "training" and figures:
            lines += [f"| training | {figures['arch']} {figures['image_size']} px batch {figures['batch_size']}, "
                      f"fp32 images/s | {show_general(figures['fp32_images_per_s'])} |",
                      f"| training | {figures['amp']} images/s (speed-up) | "
                      f"{show_general(figures['amp_images_per_s'])} ({show_general(figures['speedup'])}x) |"]
        if name == "inference" and figures:
            for stage, rate in figures.get("images_per_s", {}).items():
                lines.append(f"| inference | {stage} images/s | {show_general(rate)} |")
            share = show_general(figures.get("end_to_end_share_of_models"))
            lines.append(f"| inference | end to end / models | {share} |")
            for variant, seconds in figures.get("end_to_end_start_seconds", {}).items():
                lines.append(f"| inference | {variant} start-up seconds | {show_general(seconds)} |")
            for n, minutes in figures.get("estimated_notebook_minutes", {}).items():
                lines.append(f"| inference | notebook minutes for {n} images | {show_general(minutes)} |")
        if name == "loop" and figures:
            for kind, variants in figures.get("kinds", {}).items():
                for variant, values in variants.items():
                    shown = ", ".join(f"{key.replace('_images_per_s', '')} {show_general(values[key])}" for key in
                                      ("loop_images_per_s", "model_images_per_s", "data_images_per_s",
                                       "data_wait_share", "loop_share_of_model"))
                    lines.append(f"| loop | {kind} ({variant}) images/s | {shown} |")
        if name in ("real256", "epochs"):
            for stage, seconds in figures.get("stage_seconds", {}).items():
                lines.append(f"| {name} | {stage} seconds | {show_general(seconds)} |")
            for label, scores in figures.get("cv", {}).items():
                if label != "models":
                    shown = " / ".join(show_general(scores.get(k)) for k in ("map", "study_map", "opacity_ap"))
                    lines.append(f"| {name} | CV {label}: final / study mAP / opacity AP | {shown} |")
            for model, scores in figures.get("cv", {}).get("models", {}).items():
                shown = ", ".join(f"{k} {show_general(v)}" for k, v in scores.items())
                lines.append(f"| {name} | CV {model} | {shown} |")
            for kind, epoch in figures.get("first_epochs", {}).items():
                if epoch:
                    shown = ", ".join(f"{k} {show_general(v)}" for k, v in epoch.items())
                    lines.append(f"| {name} | {kind} first epoch | {shown} |")
    return "\n".join(lines) + "\n"


def _environment(out: Path) -> dict:
    """Child-process environment: the repository importable, offline switches, and, where polars is
    absent (the bare GPU image; its wheel is too large to carry), a stand-in whose ``read_csv``
    raises: ultralytics only reads its results.csv with polars to embed it in a checkpoint, inside a
    ``try`` that then stores nothing."""
    env = dict(os.environ, YOLO_OFFLINE="true", NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1")
    paths = [str(ROOT)]
    try:
        import polars  # noqa: F401
    except ImportError:
        stand_in = out / "stand_in"
        (stand_in / "polars").mkdir(parents=True, exist_ok=True)
        (stand_in / "polars" / "__init__.py").write_text(
            "def read_csv(*args, **kwargs):\n    raise ImportError('polars is not installed (gpu_check stand-in)')\n")
        paths.append(str(stand_in))
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("YOLO_CONFIG_DIR", str(out / "ultralytics_settings"))
    return env


def run_check(out: Path, data: Path, patients: Path | None, subset_size: int, budget_s: float, workers: int,
              part_names: list[str], smoke: bool) -> int:
    """Every part of ``part_names`` into a fresh ``out``: OUT/gpu_check.json and .md (printed); 0 when
    every part finished."""
    out = out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    env = _environment(out)
    from utils.data.inputs import is_resized_copy
    from utils.data.prepare import write_resized_subset
    from utils.data.resized_copy import make_resized_copy
    from utils.data.synthetic import make_siim_dataset

    patients = patients if patients and patients.is_file() else None
    if smoke:  # a few real images when there are some, else a synthetic copy
        if is_resized_copy(data):
            data = write_resized_subset(data, out / "smoke_data", 16)
        else:
            make_siim_dataset(out / "synthetic" / "dicom", 12, 2, seed=4, max_size=128, progress=False)
            data = out / "smoke_data"
            make_resized_copy(out / "synthetic" / "dicom", data, size=96, progress=False)
            patients = data / "train_meta.csv"
    elif not is_resized_copy(data):
        raise SystemExit(f"error: {data} is not a resized copy of the competition (meta.csv with dim0, dim1); "
                         "pass --data, or --smoke for a synthetic one")
    subset = data if smoke else write_resized_subset(data, out / "subset", subset_size)

    parts = [p for p in plan(out, data, patients, subset, smoke, workers) if p.name in part_names]
    run_parts(parts, out, budget_s, env)
    import torch

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA device)",
        "torch": torch.__version__,
        "smoke": smoke,
        "data": str(data),
        "seconds": round(time.perf_counter() - started, 1),
        "parts": [{"name": p.name, "status": p.status, "seconds": p.seconds, "cap_s": p.cap_s, "figures": p.figures,
                   "command": " ".join(p.command)} for p in parts],
    }
    write_json_atomic(out / "gpu_check.json", result)
    table = markdown(result)
    write_text_atomic(out / "gpu_check.md", table)
    print(table)
    return 0 if all(p.status == "ok" for p in parts) else 1
