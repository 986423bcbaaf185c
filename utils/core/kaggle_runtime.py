"""What the Kaggle notebook does before the predictor runs: find its inputs and install missing wheels.

Standard library only: it runs before any wheel is installed. Kaggle mounts the competition and the
attached datasets under ``/kaggle/input/<slug>/``; the slugs are the user's choice, so every folder
is found by what it holds, not by its name. Each location can be set by an environment variable,
which is how the same notebook runs outside Kaggle (and in the tests):

    SIIM_DATA_DIR     competition folder (sample_submission.csv and test/)
    SIIM_WEIGHTS_DIR  weights folder (manifest.json)
    SIIM_WHEELS_DIR   wheels folder (*.whl); absent: nothing is installed
    SIIM_OUTPUT_DIR   where submission.csv goes (default /kaggle/working)
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
# import name -> the pip requirement installed from the wheels dataset when the import is missing
REQUIRED_MODULES = {
    "ensemble_boxes": "ensemble-boxes",
    "numba": "numba",  # imported by ensemble_boxes
    "llvmlite": "llvmlite",
    "pydicom": "pydicom",
    "gdcm": "python-gdcm",
    "pylibjpeg": "pylibjpeg",
    "openjpeg": "pylibjpeg-openjpeg",
    "libjpeg": "pylibjpeg-libjpeg",
    "rle": "pylibjpeg-rle",
    "ultralytics": "ultralytics",
}
# import name -> the oldest version the project works with: an older copy in Kaggle's image is
# replaced from the wheels (pydicom 2 lacks the 3.x API the reader uses).
MINIMUM_VERSIONS = {"pydicom": "3.0"}


@dataclass(frozen=True)
class NotebookPaths:
    data_dir: Path
    weights_dir: Path
    wheels_dir: Path | None
    output_dir: Path


def _search(root: Path, test, max_depth: int = 3) -> Path | None:
    """The first folder under ``root`` (breadth first, sorted, at most ``max_depth`` deep) passing ``test``."""
    level = [root]
    for _ in range(max_depth + 1):
        for folder in level:
            if test(folder):
                return folder
        level = sorted(child for folder in level if folder.is_dir() for child in folder.iterdir() if child.is_dir())
    return None


def is_competition_dir(folder: Path) -> bool:
    return (folder / "sample_submission.csv").is_file() and (folder / "test").is_dir()


def is_weights_dir(folder: Path) -> bool:
    return (folder / "manifest.json").is_file()


def is_wheels_dir(folder: Path) -> bool:
    return any(folder.glob("*.whl"))


def _located(variable: str, test, what: str, root: Path, required: bool = True) -> Path | None:
    value = os.environ.get(variable)
    if value:
        folder = Path(value)
        if not test(folder):
            raise FileNotFoundError(f"{variable}={folder}: not a {what}")
        return folder
    found = _search(root, test) if root.is_dir() else None
    if found is None and required:
        raise FileNotFoundError(f"no {what} under {root}; attach it to the notebook or set {variable}")
    return found


def find_paths(input_root: Path = KAGGLE_INPUT) -> NotebookPaths:
    """The notebook's folders: environment variables first, else found under ``input_root``."""
    data = _located("SIIM_DATA_DIR", is_competition_dir, "competition folder (sample_submission.csv, test/)",
                    input_root)
    weights = _located("SIIM_WEIGHTS_DIR", is_weights_dir, "weights folder (manifest.json)", input_root)
    wheels_value = os.environ.get("SIIM_WHEELS_DIR")
    if wheels_value is not None:
        wheels = Path(wheels_value) if wheels_value and is_wheels_dir(Path(wheels_value)) else None
    else:
        wheels = _located("SIIM_WHEELS_DIR", is_wheels_dir, "wheels folder", input_root, required=False)
    output = Path(os.environ.get("SIIM_OUTPUT_DIR") or KAGGLE_WORKING)
    return NotebookPaths(data, weights, wheels, output)


def _older_than(installed: str, minimum: str) -> bool:
    def numbers(version):
        return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in version.split(".")[:3])
    return numbers(installed) < numbers(minimum)


def missing_requirements(modules: dict[str, str] = REQUIRED_MODULES,
                         minimum: dict[str, str] = MINIMUM_VERSIONS) -> list[str]:
    """The pip requirements whose import name is not importable here, or whose installed version is
    older than ``minimum`` asks."""
    from importlib.metadata import PackageNotFoundError, version

    missing = []
    for module, requirement in modules.items():
        if importlib.util.find_spec(module) is None:
            missing.append(requirement)
        elif module in minimum:
            try:
                if _older_than(version(requirement), minimum[module]):
                    missing.append(requirement)
            except PackageNotFoundError:
                pass
    return missing


def install_missing(wheels_dir: Path | None, modules: dict[str, str] = REQUIRED_MODULES) -> list[str]:
    """``pip install --no-index --no-deps --find-links wheels_dir`` of the missing requirements (nothing
    when all are importable or there is no wheels folder); returns what it installed. No dependencies:
    the wheels dataset carries only what Kaggle's image lacks, and pip must not try to resolve the
    image's own packages offline."""
    missing = missing_requirements(modules)
    if not missing:
        return []
    if wheels_dir is None:
        raise ModuleNotFoundError(f"missing {missing} and no wheels folder (attach the wheels dataset or set "
                                  "SIIM_WHEELS_DIR)")
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(wheels_dir),
               *missing]
    subprocess.run(command, check=True)
    importlib.invalidate_caches()
    return missing


RUNTIME_PREFIX = "runtime:"


def runtime_line() -> str:
    """``runtime: python 3.12.11 torch 2.10.0 torchvision 0.25.0``: what the notebook runs on (make
    kaggle-check reads it back to confirm the environment it built is the one that ran)."""
    import platform

    import torch
    import torchvision

    return f"{RUNTIME_PREFIX} python {platform.python_version()} torch {torch.__version__} " \
           f"torchvision {torchvision.__version__}"


def parse_runtime_line(text: str) -> dict[str, str]:
    """The versions of the last :func:`runtime_line` in ``text`` (empty when there is none)."""
    lines = [line.split() for line in text.splitlines() if line.startswith(RUNTIME_PREFIX)]
    if not lines or len(lines[-1]) != 7:
        return {}
    words = lines[-1]
    return {words[1]: words[2], words[3]: words[4], words[5]: words[6]}


def usable_device(torch_module=None) -> tuple[str, str]:
    """``(devices, message)`` for make_submission's ``--devices``: ``"cuda"`` when torch has kernels for
    the visible GPU, ``"cuda:0,cuda:1"`` with two of them (Kaggle's T4 x2: the images are shared out
    between both), else ``"cpu"`` with the reason. Kaggle's current torch has no kernels for the P100
    (sm_60): every CUDA call would fail with ``cudaErrorNoKernelImageForDevice``, so the notebook says
    so and predicts on the CPU instead (pick the "GPU T4 x2" or "L4" accelerator)."""
    torch = torch_module
    if torch is None:
        import torch
    if not torch.cuda.is_available():
        return "cpu", "no GPU visible: predicting on the CPU (slow; pick the GPU T4 x2 accelerator)"
    major, minor = torch.cuda.get_device_capability(0)
    name = torch.cuda.get_device_name(0)
    built = {arch.split("_", 1)[1] for arch in torch.cuda.get_arch_list() if arch.startswith("sm_")}
    if built and f"{major}{minor}" not in built and not any(int(a) // 10 == major and int(a) <= major * 10 + minor
                                                             for a in built if a.isdigit()):
        return "cpu", (f"this torch {torch.__version__} has no kernels for the {name} (sm_{major}{minor}; built for "
                       f"{', '.join(sorted('sm_' + a for a in built))}): predicting on the CPU instead. "
                       f"Pick the GPU T4 x2 or L4 accelerator")
    count = torch.cuda.device_count()
    if count > 1:
        return (",".join(f"cuda:{k}" for k in range(count)),
                f"predicting on {count} x {name} (sm_{major}{minor}), one worker per GPU")
    return "cuda", f"predicting on the {name} (sm_{major}{minor})"
