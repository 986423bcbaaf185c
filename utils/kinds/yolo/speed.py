"""What bounds YOLO's training loop (``infer/benchmark.py loop``): ultralytics' own trainer timed batch by
batch through its callbacks, beside its bare model (forward + loss + backward + optimiser step on one
preprocessed batch in memory) and its training loader alone (mosaic and the rest of its augmentations),
on a fold's real prepared images."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from utils.core.config import load_section
from utils.kinds.base import split_fold
from utils.kinds.yolo.config import YoloConfig
from utils.kinds.yolo.fold_setup import (
    export_yolo_images,
    model_file,
    resolve_yolo_device,
    trainer_arguments,
    trainer_class,
    write_data_yaml,
)
from utils.kinds.yolo.network import SETTINGS_DIR, import_ultralytics
from utils.training.speed import RATES, TimedBatches, bare_steps_rate, loop_figures


class _Clock:
    """Callbacks that time each epoch's batches (ultralytics runs ``on_train_batch_start`` as a batch
    arrives and ``on_train_batch_end`` after its optimiser step), and measure the bare model and the
    loader alone once training ends."""

    def __init__(self, steps: int):
        self.steps = steps
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.rates = {k: [] for k in RATES}
        self.model_and_data: tuple[float, float] | None = None

    def epoch_start(self, trainer) -> None:
        self.starts, self.ends = [], []

    def batch_start(self, trainer) -> None:
        self.starts.append(time.perf_counter())

    def batch_end(self, trainer) -> None:
        self.ends.append(time.perf_counter())

    def epoch_end(self, trainer) -> None:
        if trainer.epoch == 0:  # the first epoch warms up (and ultralytics' warm-up steps) and is dropped
            return
        span = self.ends[-1] - self.starts[0]
        waits = sum(s - e for s, e in zip(self.starts[1:], self.ends[:-1]))
        self.rates["loop"].append(len(self.starts) * trainer.batch_size / span)
        self.rates["wait"].append(waits / span)

    def train_end(self, trainer) -> None:
        device = trainer.device
        model = trainer.model
        model.train()
        batch = trainer.preprocess_batch(next(iter(trainer.train_loader)))
        images = len(batch["img"])

        def step():
            with torch.autocast(device.type, enabled=bool(trainer.amp)):
                loss, _ = model(batch)
            trainer.optimizer.zero_grad()
            loss.sum().backward()
            trainer.optimizer.step()

        loader = TimedBatches(_Batches(trainer.train_loader, self.steps))
        for _ in range(max(1, len(self.rates["loop"]))):
            self.rates["model"].append(bare_steps_rate(step, images, self.steps, device))
            for _ in loader:
                pass
            self.rates["data"].append(loader.delivery_rate())


class _Batches:
    """The first ``n`` batches of an ultralytics loader, each as ``(images, ...)`` for :class:`TimedBatches`."""

    def __init__(self, loader, n: int):
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for k, batch in enumerate(self.loader):
            if k >= self.n:
                return
            yield (batch["img"],)


def benchmark_yolo(kind, config_path, prepared, *, fold: int = 0, steps: int = 8, repeats: int = 3,
                   overrides: dict | None = None, variants: dict[str, dict] | None = None,
                   work_dir=None) -> dict:
    """The loop, model and data figures of ``kind`` (the yolo kind) for the config's ``yolo`` section and
    of each variant, each a short ultralytics training of ``repeats + 1`` epochs of ``steps`` batches (the
    first epoch dropped) on the same images of the fold's training part, one after another (a run per
    variant: ultralytics' start costs seconds)."""
    base = dict(overrides or {})
    configs = {"config": load_section(config_path, "yolo", YoloConfig, base)}
    for name, changes in (variants or {}).items():
        configs[name] = load_section(config_path, "yolo", YoloConfig, {**base, **changes})
    work = Path(work_dir or tempfile.mkdtemp(prefix="bench-yolo-"))
    ultralytics = import_ultralytics((work / SETTINGS_DIR).resolve())

    results = {}
    for name, config in configs.items():
        config.check_files()
        table = kind.load_table(Path(prepared), config)
        train, val, _ = split_fold(table, fold, prepared)
        chosen = train.sample(n=min(len(train), steps * config.batch_size), random_state=fold)
        shown = val.head(config.batch_size)
        paths = export_yolo_images(chosen, work / "dataset")
        val_paths = export_yolo_images(shown, work / "dataset")
        run_dir = (work / name).resolve()
        data_yaml = write_data_yaml(run_dir, paths, val_paths)
        clock = _Clock(steps)
        model = ultralytics.YOLO(model_file(config, run_dir))
        for event, callback in (("on_train_epoch_start", clock.epoch_start),
                                ("on_train_batch_start", clock.batch_start), ("on_train_batch_end", clock.batch_end),
                                ("on_train_epoch_end", clock.epoch_end), ("on_train_end", clock.train_end)):
            model.add_callback(event, callback)
        arguments = trainer_arguments(config, data_yaml, run_dir, resolve_yolo_device(config.device))
        model.train(trainer=trainer_class(config), **{**arguments, "epochs": repeats + 1, "val": False})
        results[name] = loop_figures(clock.rates, {
            "batch_size": config.batch_size, "image_size": config.image_size, "workers": config.workers,
            "amp": config.amp, "channels_last": config.channels_last, "model": config.model, "trunk": config.trunk,
            "threads": torch.get_num_threads()})
    return results
