"""What every model kind provides, and the one fold loop that trains any of them.

A kind (:class:`ModelKind`) is one module under ``utils/kinds/``: its config schema (a dataclass: the
YAML section of the same name), how to read its training table, how to train one fold and predict
the held-out images (shared prediction rows), its out-of-fold report, how its weights enter the
manifest, and its inference member (:class:`Member`) for the predictor. :func:`train_folds` runs the
same loop for every kind; the torch kinds share :class:`TorchKind`'s fold (the engine's ``fit``, the
best checkpoint reloaded, the held-out fold predicted); YOLO adapts ultralytics' trainer behind the
same ``train_fold``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ClassVar

import pandas as pd
import torch
from torch.utils.data import Dataset

from utils.core.config import save_config
from utils.core.files import atomic_path
from utils.core.log import first_line
from utils.core.runtime import resolve_device, resolve_precision
from utils.data.training_table import fold_split, select_folds
from utils.ensemble.manifest import (
    MANIFEST_FILE,
    ManifestError,
    entry_files,
    load_state_dict_file,
    mark_replacing_files,
    read_manifest,
    register_model,
)
from utils.scoring.detection import read_detection_table
from utils.training.checkpoints import load_checkpoint
from utils.training.distributed import init_distributed
from utils.training.loaders import collate_skip_none
from utils.training.loop import fit, predict, seed_initialisation

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A training run that cannot go on (bad table, empty fold); the message names the file."""


@dataclass(frozen=True)
class RunOptions:
    """How a training script was started: its prepared table, run folder and switches."""

    prepared: Path
    out: Path
    weights_dir: Path | None = None
    resume: bool = False
    progress: bool = True
    start_from: Path | None = None  # a weights folder: each fold starts from its model's weights of that fold


@dataclass(frozen=True)
class StagePlan:
    """What ``train/train_all.py`` runs a kind's stage with: the config file, the run folder, and the
    optional NIH and RSNA folders (a kind's stage arguments and file checks depend on them)."""

    config_path: Path
    out: Path
    nih_dir: Path | None = None
    rsna_dir: Path | None = None


@dataclass
class FoldResult:
    """One trained fold: the weights to keep and the held-out predictions (None off rank 0)."""

    best: Path
    predictions: pd.DataFrame | None


GENERIC_SCRIPT = "train/train_kind.py"  # trains any registered kind: ``--kind SECTION``


class KindTraining:
    """The training role: what :func:`train_folds` and the kind's training script use."""

    # Its one name: config section, run folder under OUT/, manifest entry and "kind", weights subfolder,
    # the "model" column of its prediction rows (manifests written before: utils.core.kind_names.LEGACY_NAMES).
    name: ClassVar[str]
    config_class: ClassVar[type]
    member_class: ClassVar[type]  # the predictor's member
    title: ClassVar[str]
    resumable: ClassVar[bool] = True  # the engine's exact resume (--resume)
    # Whether its folds can start from an earlier run's weights of the same model (``--start-from``).
    can_start_from: ClassVar[bool] = False

    def sizes(self, config) -> set[int]:
        """The prepared image sizes this kind reads (train/prepare.py writes each once)."""
        return {config.image_size}

    def load_table(self, meta_csv: Path, config) -> pd.DataFrame:
        raise NotImplementedError

    def before_folds(self, config, options: RunOptions):
        """The config the folds train with, after work done once that decides it (Faster R-CNN's RSNA
        pre-training sets ``init_from``); the first thing :func:`train_folds` does."""
        return config

    def start(self, table: pd.DataFrame, config, options: RunOptions) -> None:
        """Work done once before the folds (YOLO exports its dataset)."""

    def train_fold(self, table: pd.DataFrame, fold: int, config, options: RunOptions) -> FoldResult:
        raise NotImplementedError

    def write_report(self, oof: pd.DataFrame, table: pd.DataFrame, out: Path) -> dict:
        raise NotImplementedError

    def register(self, best: dict[int, Path], config, weights_dir: Path) -> Path:
        """Export each fold's best weights to ``<name>/fold<k>.pt`` and register them."""
        return register_fold_checkpoints(weights_dir, self.name, best,
                                         self.input_size(config), asdict(config))

    def input_size(self, config) -> int:
        """The size its inference member predicts at (stored in the manifest)."""
        return config.image_size

    def check_start_from(self, config, weights_dir: Path, folds: list[int]) -> None:
        """Before anything is trained: ``--start-from weights_dir`` can start each of ``folds`` (a
        ``TrainingError`` naming the folder, the file and the reason otherwise); kinds that can start
        from an earlier run say how."""


class KindStage:
    """The pipeline role: what ``train/train_all.py`` needs to run the kind as one of its stages (a model
    kind's stage is :data:`GENERIC_SCRIPT` ``--kind <name>``)."""

    # train_all gives it the NIH backbone it trained (``backbone=OUT/backbone/best.pt``) when there is one.
    trunk_from_backbone: ClassVar[bool] = False

    def plan_overrides(self, plan: StagePlan) -> list[str]:
        """Its section's keys (``KEY=VALUE``) that train_all's own options set, before the user's ``--set``
        (Faster R-CNN: ``pretrain_rsna`` from ``--rsna-dir``); train_all checks the section with them."""
        return []

    def check_files(self, config, plan: StagePlan) -> None:
        """Files its config names that must exist before train_all's first stage: a ``ValueError`` or
        ``FileNotFoundError`` saying which key and file (train_all adds the config file and section)."""


class KindChecks:
    """The measuring role: what the benchmarks, the GPU check (infer/gpu_check.py) and the Kaggle check
    run of the kind; overrides are its section's keys as ``KEY=VALUE``."""

    trunk_from_backbone: ClassVar[bool]  # the pipeline role's (KindStage): its speed run drops the NIH trunk

    def untrained_weights(self, config, path: Path) -> None:
        """One fold's randomly initialised weights at ``path``, in the format its member loads (benchmarks,
        the GPU and Kaggle checks: prediction speed does not depend on what the weights learned)."""
        raise NotImplementedError

    def toy_overrides(self) -> list[str]:
        """Toy sizes that train one epoch in seconds on a CPU (the check's smoke run)."""
        return ["epochs=1"]

    def speed_run_overrides(self, smoke: bool) -> list[str]:
        """Its one-epoch speed run: one fold, one epoch, no NIH trunk (speed does not depend on it); with
        ``smoke``, the smallest model too."""
        return ["folds=[0]", "epochs=1", *(["backbone=none"] if self.trunk_from_backbone else [])]

    def first_epoch_figures(self, run_dir: Path) -> dict:
        """Speed and memory of the first epoch of fold 0 in its run folder (empty when there is none)."""
        return {}

    def loop_benchmark(self, config_path, prepared, *, fold: int, steps: int, repeats: int,
                       overrides: dict | None = None, variants: dict[str, dict] | None = None) -> dict:
        """What bounds its training loop (``infer/benchmark.py loop``): variant name (``"config"``: the
        config's own settings) -> :func:`utils.training.speed.loop_figures`. The torch kinds share one
        measurement (:mod:`utils.benchmarking.loop_benchmark`); a kind with a trainer of its own says how."""
        raise NotImplementedError(f"{type(self).__name__} has no training-loop benchmark")


class ModelKind(KindTraining, KindStage, KindChecks):
    """One kind of model, in its three roles (training, pipeline stage, measuring; see the module
    docstring and docs/architecture.md). Subclasses fill them in; an instance holds no state (the
    registry's one instance serves every run of the process). A kind outside the project registers
    through an entry point (:mod:`utils.core.plugins`)."""


class PretrainingKind(KindStage):
    """A kind trained once before the fold-trained kinds, on data of its own, whose best weights are
    their starting trunk (the NIH backbone): no folds, no member, no manifest entry. train_all runs it
    as a stage when the plan has its data (:meth:`has_input`); the kinds with ``trunk_from_backbone``
    then start from :meth:`trunk_file`. Like :class:`ModelKind`, an instance holds no state."""

    name: ClassVar[str]  # config section and run folder under OUT/
    config_class: ClassVar[type]
    title: ClassVar[str]
    script: ClassVar[str]  # its training command, relative to the repository: train_all's stage

    def stage_arguments(self, plan: StagePlan) -> list[str]:
        """Arguments of its stage beyond ``--out`` and the config (its data folder)."""
        return []

    def has_input(self, plan: StagePlan) -> bool:
        """Whether train_all has this kind's data (otherwise its stage is skipped and the other kinds
        start from their configs' ``backbone``)."""
        raise NotImplementedError

    def trunk_file(self, out: Path) -> Path:
        """The weights the other kinds start from, in run folder ``out``."""
        return Path(out) / self.name / "best.pt"


def export_weights(checkpoint: dict, path) -> Path:
    """The ``model`` state dict of an engine checkpoint, alone (no optimizer), written atomically."""
    with atomic_path(path) as temporary:
        torch.save(checkpoint["model"], temporary)
    return Path(path)


def register_fold_checkpoints(weights_dir, name: str, checkpoints: dict[int, Path], input_size: int,
                              config: dict) -> Path:
    """Export each fold's engine checkpoint to ``<name>/fold<k>.pt`` and register model ``name``."""
    weights_dir = Path(weights_dir)
    files = {}
    mark_replacing_files(weights_dir, name)
    for fold, checkpoint in sorted(checkpoints.items()):
        relative = Path(name) / f"fold{fold}.pt"
        export_weights(load_checkpoint(checkpoint), weights_dir / relative)
        files[int(fold)] = str(relative)
    return register_model(weights_dir, name, files, input_size, config)


def fold_weights(weights_dir, name: str, fold: int) -> dict:
    """Model ``name``'s exported weights of ``fold`` in a weights folder (read with ``weights_only``);
    a ``TrainingError`` when the folder has no such model or fold."""
    manifest = read_manifest(weights_dir, must_exist=True)
    spec = manifest["models"].get(name)
    if spec is None or fold not in spec.get("folds", []):
        raise TrainingError(f"{Path(weights_dir) / 'manifest.json'}: no fold {fold} of model {name!r} to start from "
                            f"(models: { {n: m.get('folds') for n, m in manifest['models'].items()} })")
    folds, files, _ = entry_files(weights_dir, name, spec)
    return load_state_dict_file(files[folds.index(fold)])


def split_fold(table: pd.DataFrame, fold: int, source) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    try:
        return fold_split(table, fold, source)
    except ValueError as err:
        raise TrainingError(str(err)) from err


def train_folds(kind: ModelKind, config, options: RunOptions) -> dict:
    """The one fold loop: read the table, train every configured fold, write the out-of-fold report
    (rank 0) and register the weights. Returns the report's scores (empty off rank 0)."""
    config = kind.before_folds(config, options)
    info = init_distributed(getattr(config, "device", "auto"))
    try:
        table = kind.load_table(options.prepared, config)
        folds = select_folds(table, config.folds, options.prepared)
    except (OSError, ValueError) as err:
        raise TrainingError(str(err)) from err
    if info.is_main:
        save_config(config, options.out / "config.yaml", kind.name)
        log.info("%s: %d images (%d used for training, %d with boxes); training folds %s", kind.title, len(table),
                 int(table["used"].sum()), int((table["n_boxes"].astype(int) > 0).sum()), folds)
    if options.start_from is not None and not kind.can_start_from:
        raise TrainingError(f"{kind.title}: cannot start from an earlier run's weights (--start-from)")
    if options.start_from is not None and not options.resume:
        kind.check_start_from(config, options.start_from, folds)
    kind.start(table, config, options)
    results = {fold: kind.train_fold(table, fold, config, options) for fold in folds}
    scores = {}
    if info.is_main:
        oof = pd.concat([r.predictions for r in results.values()], ignore_index=True)
        scores = kind.write_report(oof, table[table["fold"].isin(folds)], options.out)
        if options.weights_dir is not None:
            path = kind.register({fold: r.best for fold, r in results.items()}, config, options.weights_dir)
            log.info("registered %d fold(s) of %r in %s", len(results), kind.name, path)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return scores


class DetectorKind:
    """What both opacity detectors share: trained at ``image_size``, predicting at ``predict_size``,
    on the detection table (boxes normalised, both sizes' paths). Mixed in before the base kind."""

    def sizes(self, config) -> set[int]:
        return {config.image_size, config.predict_size}

    def input_size(self, config) -> int:
        return config.predict_size

    def load_table(self, meta_csv, config) -> pd.DataFrame:
        """The detection table; a pseudo-labelled image whose boxes are not a label (neither confidently
        "none" nor with a confident box) is not used: a detector would learn it as a negative."""
        table = read_detection_table(meta_csv, config.image_size, config.predict_size, pseudo=True)
        if table["pseudo"].any():
            table.loc[table["pseudo"] & ~table["pseudo_boxes"], "used"] = False
        return table


class TorchKind(ModelKind):
    """A kind trained by the engine: subclasses say how to build the model, its datasets, how the
    validation outputs are scored, and how outputs become prediction rows."""

    collate: ClassVar[Callable] = staticmethod(collate_skip_none)
    can_start_from: ClassVar[bool] = True

    def build_model(self, config) -> torch.nn.Module:
        raise NotImplementedError

    def untrained_model(self, config) -> torch.nn.Module:
        """The model of ``config`` with random weights, no starting file read (what its member loads)."""
        raise NotImplementedError

    def untrained_weights(self, config, path: Path) -> None:
        torch.save(self.untrained_model(config).state_dict(), path)

    def check_start_from(self, config, weights_dir: Path, folds: list[int]) -> None:
        """The folder's manifest has this model for every fold, each file loads (``weights_only``) and
        fits the network ``config`` builds (same arch and heads); a different input size is a warning:
        fine-tuning at another size is allowed, but it should be meant."""
        where = f"--start-from {weights_dir}"
        try:
            manifest = read_manifest(weights_dir, must_exist=True)
            spec = manifest["models"].get(self.name)
            if spec is None:
                raise TrainingError(f"{Path(weights_dir) / MANIFEST_FILE}: no model {self.name!r} to start "
                                    f"the {self.title} from (models: {sorted(manifest['models'])})")
            stored, files, size = entry_files(weights_dir, self.name, spec)
            missing = [f for f in folds if f not in stored]
            if missing:
                raise TrainingError(f"{Path(weights_dir) / MANIFEST_FILE}: model {self.name!r} has folds "
                                    f"{stored}, not {missing}, to start from")
            network = self.untrained_model(config)
            for fold in folds:
                path = files[stored.index(fold)]
                try:
                    network.load_state_dict(load_state_dict_file(path))
                except RuntimeError as err:
                    raise TrainingError(f"{where}: {path} does not fit the {self.title} of this config "
                                        f"(arch {getattr(config, 'arch', '?')!r}): "
                                        f"{first_line(err) or type(err).__name__}") from None
        except ManifestError as err:
            raise TrainingError(f"{where}: {err}") from None
        if size != self.input_size(config):
            log.warning("%s: the %s there was trained for input size %d, this config's is %d", where, self.title,
                        size, self.input_size(config))

    def datasets(self, train: pd.DataFrame, val: pd.DataFrame, config) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def held_out_dataset(self, held_out: pd.DataFrame, config) -> Dataset:
        raise NotImplementedError

    def prediction_model(self, model: torch.nn.Module, config) -> torch.nn.Module:
        """The trained model as it predicts the held-out fold (at its prediction size, with TTA...)."""
        return model

    def rows(self, frame: pd.DataFrame, fold: int, outputs: dict) -> pd.DataFrame:
        """Prediction rows (utils/data/predictions.py's schema) of ``frame``'s images from model outputs."""
        raise NotImplementedError

    def val_scores(self, predictions: pd.DataFrame, val: pd.DataFrame) -> dict[str, float]:
        raise NotImplementedError

    def monitor(self, config) -> tuple[str, str]:
        """``(validation metric, "max"|"min")`` that picks the best epoch."""
        raise NotImplementedError

    def batch_size(self, config) -> int:
        """Images per validation and prediction step."""
        return config.batch_size

    def prepare_train(self, train: pd.DataFrame, config) -> pd.DataFrame:
        """The training images actually used (e.g. a share of the negatives)."""
        return train

    def train_fold(self, table: pd.DataFrame, fold: int, config, options: RunOptions, *,
                   title: str | None = None) -> FoldResult:
        """Train on the used images of the other folds, keep the best epoch on this fold's used
        images, then predict every image of this fold (un-annotated duplicates too: a study's
        probability is the mean over all its images, as at test time)."""
        train, val, held_out = split_fold(table, fold, options.prepared)
        train = self.prepare_train(train, config)

        def evaluate(indices: torch.Tensor, outputs: dict) -> dict:
            return self.val_scores(self.rows(val.iloc[indices.numpy()], fold, outputs), val)

        seed_initialisation(config.seed + fold)  # each fold its own initialisation, the same in every rerun
        model = self.build_model(config)
        if options.start_from is not None and not options.resume:
            model.load_state_dict(fold_weights(options.start_from, self.name, fold))
            log.info("%s, fold %d: starts from %s", self.title, fold, options.start_from)
        monitor, mode = self.monitor(config)
        train_set, val_set = self.datasets(train, val, config)
        result = fit(model, train_set, val_set, config, options.out / f"fold{fold}", evaluate=evaluate,
                     monitor=monitor, mode=mode, resume=options.resume, collate_fn=self.collate,
                     val_batch_size=self.batch_size(config), progress=options.progress,
                     title=f"{title or self.title}, fold {fold}")
        if not init_distributed(config.device).is_main:
            return FoldResult(result.best_checkpoint, None)
        model.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])
        return FoldResult(result.best_checkpoint, self.predict_frame(model, held_out, fold, config, options.progress))

    def first_epoch_figures(self, run_dir: Path) -> dict:
        """Images/s and peak GPU memory of fold 0's first epoch (the engine's metrics.csv)."""
        path = Path(run_dir) / "fold0" / "metrics.csv"
        if not path.is_file():
            return {}
        first = pd.read_csv(path).iloc[0]

        def number(key: str, digits: int):
            value = pd.to_numeric(first.get(key), errors="coerce")
            return None if pd.isna(value) else round(float(value), digits)

        return {"images_per_s": number("train_images_per_s", 1),
                "peak_gpu_memory_gib": number("train_peak_gpu_memory_gib", 2),
                "train_images": int(number("train_n_images", 0) or 0)}

    def predict_frame(self, model: torch.nn.Module, frame: pd.DataFrame, fold: int, config,
                      progress: bool = True) -> pd.DataFrame:
        """Prediction rows of every image of ``frame`` by trained ``model`` (this process alone)."""
        device = resolve_device(config.device)
        _, indices, outputs = predict(self.prediction_model(model, config), self.held_out_dataset(frame, config),
                                      batch_size=self.batch_size(config), workers=config.workers, device=device,
                                      precision=resolve_precision(config.amp, device), collate_fn=self.collate,
                                      progress=progress, desc=f"fold {fold} out-of-fold")
        return self.rows(frame.iloc[indices.numpy()], fold, outputs)
