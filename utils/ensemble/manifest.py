"""``weights/manifest.json``: what training produced and inference may load.

    {"models": {"<name>": {"kind": "study", "folds": [0, 1, ...],
                           "files": {"0": "study/fold0.pt", ...}, "input_size": 512,
                           "config": {...resolved training config...}}}}

Training registers models here; the predictor, the notebook and the web app only read it. File
paths are relative to the manifest's folder, so the folder can be moved or uploaded as is.
"""

from __future__ import annotations

import json
from pathlib import Path

from utils.core.config import MAX_IMAGE_SIZE
from utils.core.files import atomic_path, file_lock, remove_stale_temporaries
from utils.core.kind_names import canonical_name
from utils.core.log import first_line

MANIFEST_FILE = "manifest.json"
# An entry whose files are being replaced (:func:`mark_replacing_files`): a stage stopped between writing new
# weights and registering them leaves it, and the entry is refused until that stage is run again.
REPLACING_KEY = "replacing_files"
MAX_MANIFEST_BYTES = 16 << 20  # far above any real one (a few kB per model); refused before it is read


class ManifestError(ValueError):
    """A manifest or weights folder that cannot be used; names the file and the problem."""


def read_manifest(weights_dir, must_exist: bool = False) -> dict:
    """The manifest of ``weights_dir`` (an empty one when there is none yet, unless ``must_exist``:
    then a missing folder or file is an error saying so)."""
    weights_dir = Path(weights_dir)
    path = weights_dir / MANIFEST_FILE
    if must_exist and not weights_dir.is_dir():
        raise ManifestError(f"{weights_dir}: weights folder not found")
    if not path.is_file():
        if must_exist:
            raise ManifestError(f"{path}: not found: no trained models in {weights_dir} (run train/train_all.py)")
        return {"models": {}}
    if path.stat().st_size > MAX_MANIFEST_BYTES:  # before reading: a manifest is kilobytes of settings
        raise ManifestError(f"{path}: {path.stat().st_size} bytes; a manifest is at most {MAX_MANIFEST_BYTES}")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:  # ValueError: bad JSON, or an integer of thousands of digits
        raise ManifestError(f"{path}: not valid JSON ({first_line(err)})") from None
    except RecursionError:
        raise ManifestError(f"{path}: nested too deeply to be a manifest") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise ManifestError(f"{path}: expected an object with a 'models' mapping")
    return with_current_names(manifest, path)


def with_current_names(manifest: dict, where) -> dict:
    """``manifest`` with every model entry and kind under today's name (a manifest written before each
    kind had one name says ``faster_rcnn``, ``study_classifier``: utils.core.kind_names.LEGACY_NAMES)."""
    models, written = {}, {}
    for name, spec in manifest["models"].items():
        current = canonical_name(name)
        if current in models:
            raise ManifestError(f"{where}: models {written[current]!r} and {name!r} are one model under its current "
                                "and its older name; keep one")
        if isinstance(spec, dict) and isinstance(spec.get("kind"), str):
            spec = {**spec, "kind": canonical_name(spec["kind"])}
        models[current], written[current] = spec, name
    return {**manifest, "models": models}


def named_files(weights_dir, manifest: dict) -> list[Path]:
    """Every file ``manifest`` (read from ``weights_dir``) names (each model's fold files, wherever they
    sit: a flat folder keeps them beside the manifest) and the manifest itself: what a command that
    predicts with the folder reads, so none of them may be an output. A damaged entry names what it can
    (loading it for prediction reports the damage)."""
    weights_dir = Path(weights_dir)
    paths = [weights_dir / MANIFEST_FILE]
    for spec in manifest["models"].values():
        files = spec.get("files") if isinstance(spec, dict) else None
        if isinstance(files, dict):
            paths += [weights_dir / name for name in files.values()
                      if isinstance(name, str) and name and "\x00" not in name]
    return paths


def entry_files(weights_dir, name: str, spec) -> tuple[list[int], list[Path], int]:
    """``(folds, files, input size)`` of manifest entry ``name`` after checking its shape: folds a list
    of integers, a file for each inside the weights folder (never outside it: an entry of
    ``/etc/passwd`` or ``../x`` is refused) that exists, a positive integer input size."""
    where = f"{Path(weights_dir) / MANIFEST_FILE}: model {name!r}"
    if not isinstance(spec, dict):
        raise ManifestError(f"{where}: expected an object, got {type(spec).__name__}")
    if spec.get(REPLACING_KEY):
        raise ManifestError(f"{where}: its training stage stopped while writing new weights over this entry's "
                            "files, so they may not match it: run that stage again with --resume")
    folds, files, size = spec.get("folds"), spec.get("files"), spec.get("input_size")
    if not isinstance(folds, list) or not folds or not all(isinstance(f, int) and not isinstance(f, bool)
                                                             for f in folds):
        raise ManifestError(f"{where}: 'folds' must be a non-empty list of integers, got {folds!r}")
    if not isinstance(files, dict) or any(str(f) not in files for f in folds):
        raise ManifestError(f"{where}: 'files' must name a file for every fold {folds}, got {files!r}")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise ManifestError(f"{where}: 'input_size' must be an integer in 1-{MAX_IMAGE_SIZE}, got {size!r}")
    if len(set(folds)) != len(folds):
        raise ManifestError(f"{where}: 'folds' lists a fold twice: {folds}")
    root = Path(weights_dir).resolve()
    paths = []
    for fold in folds:
        name = files[str(fold)]
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ManifestError(f"{where}: fold {fold} file must be a path relative to the weights folder, "
                                f"got {name!r}")
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise ManifestError(f"{where}: fold {fold} file {files[str(fold)]!r} is outside the weights folder {root}")
        if not path.is_file():
            raise ManifestError(f"{where}: weights file not found: {path}")
        # One file for two folds would count one model twice in every average over the folds.
        for earlier_fold, earlier in zip(folds, paths):
            if earlier == path or earlier.samefile(path):
                raise ManifestError(f"{where}: folds {earlier_fold} and {fold} name the same weights file {path}; "
                                    "each fold needs its own")
        paths.append(path)
    return folds, paths, size


def load_state_dict_file(path) -> dict:
    """A weights file exported by training (a state dict), loaded safely (``weights_only``); anything
    else (corrupt, truncated, not ours) is a ManifestError naming the file."""
    import torch  # here: the scripts that only read or write manifests (the reports) start without torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every unpickling failure means the same: not a usable file
        raise ManifestError(f"{path}: not a readable weights file ({type(err).__name__}); is it corrupt or "
                            f"truncated? Re-export it from its training run") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ManifestError(f"{path}: expected a state dict of tensors")
    return state


def _write_manifest(weights_dir: Path, manifest: dict) -> Path:
    path = weights_dir / MANIFEST_FILE
    remove_stale_temporaries(weights_dir, Path(MANIFEST_FILE).stem)  # a killed writer's half-written copies
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def register_model(weights_dir, name: str, files: dict[int, str], input_size: int, config: dict) -> Path:
    """Add or replace model ``name`` of kind ``name`` (a kind has one name: its entry, its kind and its
    weights subfolder); ``files`` maps fold -> path relative to ``weights_dir`` (must exist)."""
    # Which kinds exist is the registries' business (utils.kinds.registry, utils.kinds.members): the
    # predictor refuses an entry whose kind has no member, naming the known ones.
    if not isinstance(name, str) or not name:
        raise ManifestError(f"model {name!r}: its name (and kind) must be a non-empty string")
    weights_dir = Path(weights_dir)
    for relative in files.values():
        if not (weights_dir / relative).is_file():
            raise ManifestError(f"{weights_dir / relative}: weights file not found")
    with file_lock(weights_dir / MANIFEST_FILE):  # two stages registering at once both land
        manifest = read_manifest(weights_dir)
        manifest["models"][name] = {
            "kind": name,
            "folds": sorted(int(f) for f in files),
            "files": {str(f): str(p) for f, p in sorted(files.items())},
            "input_size": int(input_size),
            "config": config,
        }
        return _write_manifest(weights_dir, manifest)


def mark_replacing_files(weights_dir, name: str) -> None:
    """Called before model ``name``'s new fold files are written over its registered ones: its entry (if
    any) is marked, so that a kill between the files and their registration (:func:`register_model`,
    which writes a fresh entry without the mark) leaves an entry the predictor refuses in one line
    rather than new weights served under the old entry's settings."""
    weights_dir = Path(weights_dir)
    with file_lock(weights_dir / MANIFEST_FILE):
        manifest = read_manifest(weights_dir)
        if isinstance(manifest["models"].get(name), dict):
            manifest["models"][name][REPLACING_KEY] = True
            _write_manifest(weights_dir, manifest)


def register_ensemble(weights_dir, settings: dict, calibration: dict | None = None) -> Path:
    """Store the ensemble's settings (TTA, fusion, none blending) beside the models, under
    ``"ensemble"``, so that a weights folder alone says how to predict with it; ``calibration`` (where
    they were chosen out of fold: infer/calibrate.py's summary) under ``"calibration"``, else that key
    is removed (the settings came from a config)."""
    weights_dir = Path(weights_dir)
    with file_lock(weights_dir / MANIFEST_FILE):
        manifest = read_manifest(weights_dir)
        manifest["ensemble"] = settings
        manifest.pop("calibration", None)
        if calibration is not None:
            manifest["calibration"] = calibration
        return _write_manifest(weights_dir, manifest)
