"""Prediction over several devices (Kaggle's two T4s): one worker process per device, each with its own
copy of the ensemble, the images dealt out batch by batch, the predictions merged back in order.

Each shard is made of whole batches of the one-device run (batch k goes to worker k mod n), so every
model sees exactly the batches it would see on one device and the submission is the same (to float
rounding: on the CPU each worker's thread count changes the order of its sums). Workers are
spawned (CUDA cannot be forked) and hand their predictions back through a file, so a large shard never
blocks a pipe; a worker that fails stops the run with its error.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from utils.core.config import DeviceError, check_device_name
from utils.core.files import atomic_path
from utils.core.interrupt import die_with_parent
from utils.core.runtime import resolve_device

log = logging.getLogger(__name__)


def parse_devices(text: str) -> list[str]:
    """``"cuda:0,cuda:1"`` -> ``["cuda:0", "cuda:1"]`` (``"cpu,cpu"`` runs two CPU workers, for tests)."""
    devices = [part.strip() for part in text.split(",") if part.strip()]
    if not devices:
        raise ValueError(f"--devices {text!r}: expected a comma-separated list such as cuda:0,cuda:1")
    for device in devices:
        if device == "auto":
            raise ValueError("--devices: 'auto' is not one device; name each (cpu, cuda or cuda:N)")
        try:
            check_device_name(device)
        except DeviceError as err:
            raise ValueError(f"--devices: {err}") from None
    return devices


def batch_shards(n_items: int, batch_size: int, n_shards: int) -> list[list[int]]:
    """Item indices per shard: batch k (items ``k*batch_size ...``) goes to shard ``k % n_shards``."""
    shards: list[list[int]] = [[] for _ in range(n_shards)]
    for batch, start in enumerate(range(0, n_items, batch_size)):
        shards[batch % n_shards].extend(range(start, min(start + batch_size, n_items)))
    return shards


def _worker(weights_dir: str, config, device: str, images: list, batch_size: int, workers: int, threads: int | None,
            out: str, done, parent_pid: int) -> None:
    """One device's share: load the ensemble there, predict (adding to the shared count ``done`` after
    each batch, for the parent's progress bar), write ``(predictions, error)`` to ``out``."""
    die_with_parent(parent_pid)
    import torch

    from utils.prediction.predictor import Ensemble

    def count(n: int) -> None:
        with done.get_lock():
            done.value += n

    try:
        if threads:
            torch.set_num_threads(threads)
        with Ensemble(weights_dir, replace(config, device=device)) as ensemble:  # its fusion processes stop
            result = ensemble.predict_paths(images, batch_size=batch_size, workers=workers, progress=False,
                                            on_batch=count), None
    except BaseException:  # handed to the parent, which raises it
        result = None, traceback.format_exc()
    # Written whole or not at all: a worker killed mid-write leaves no file, which the parent names.
    with atomic_path(Path(out)) as temporary, open(temporary, "wb") as handle:
        pickle.dump(result, handle)


class ShardError(RuntimeError):
    """A worker of a multi-device prediction failed (its traceback is in the message)."""


class ShardedEnsemble:
    """The ensemble of ``weights_dir`` on several devices, where :class:`utils.prediction.predictor.Ensemble` is
    on one (``write_ensemble_submission`` takes either). This process only checks the manifest: each
    worker loads the models on its own device, and a copy here would be loaded for nothing."""

    def __init__(self, weights_dir, config, devices: Sequence[str]):
        from utils.prediction.predictor import checked_manifest

        self.weights_dir = Path(weights_dir)
        _, self.config = checked_manifest(self.weights_dir, config)
        # each device exists here, before a worker is spawned for it
        self.devices = tuple(resolve_device(device) for device in devices)
        self.load_seconds = None  # each worker loads its own copy

    def close(self) -> None:
        """Nothing to stop here: each worker stops its own fusion processes."""

    def __enter__(self) -> "ShardedEnsemble":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def predict_paths(self, paths: Sequence, *, batch_size: int | None = None, workers: int | None = None,
                      progress: bool = True, on_batch=None) -> list:
        """As :meth:`utils.prediction.predictor.Ensemble.predict_paths`; ``on_batch(n)`` is called as the workers'
        count of predicted images grows."""
        # CPU workers share the cores; GPU workers keep torch's default
        cpu_only = all(device.type == "cpu" for device in self.devices)
        threads = max(1, (os.cpu_count() or 1) // len(self.devices)) if cpu_only else None
        return predict_on_devices(self.weights_dir, self.config, paths, [str(d) for d in self.devices],
                                  batch_size=batch_size or self.config.batch_size,
                                  workers=self.config.workers if workers is None else workers,
                                  cpu_threads=threads, progress=progress, on_batch=on_batch)


def predict_on_devices(weights_dir, config, images: Sequence, devices: Sequence[str], *, batch_size: int,
                       workers: int, cpu_threads: int | None = None, progress: bool = True,
                       on_batch=None) -> list:
    """``Ensemble.predict_paths`` over ``devices`` at once (one process each); the predictions in the
    order of ``images``. ``workers`` decoding processes per device; ``cpu_threads`` torch threads per
    worker (for CPU workers, which would otherwise each take every core)."""
    from tqdm import tqdm

    shards = batch_shards(len(images), batch_size, len(devices))
    context = multiprocessing.get_context("spawn")
    done = context.Value("l", 0)
    with tempfile.TemporaryDirectory(prefix="siim-shards-") as folder:
        processes = []
        for k, (device, indices) in enumerate(zip(devices, shards)):
            if not indices:
                continue
            out = str(Path(folder) / f"shard{k}.pkl")
            process = context.Process(target=_worker, name=f"predict-{device}-{k}", args=(
                str(weights_dir), config, device, [images[i] for i in indices], batch_size, workers, cpu_threads, out,
                done, os.getpid()))
            process.start()
            processes.append((k, device, indices, process, out))
            log.info("worker %d on %s: %d images", k, device, len(indices))
        with tqdm(total=len(images), desc=f"predict on {len(processes)} devices", unit="image",
                  disable=not progress) as bar:
            def report() -> None:
                grown = done.value - bar.n
                if grown:
                    bar.update(grown)
                    if on_batch is not None:
                        on_batch(grown)

            while any(p.is_alive() for *_, p, _ in processes):
                report()
                time.sleep(0.5)
            report()
        merged: list = [None] * len(images)
        failures = []
        for k, device, indices, process, out in processes:
            process.join()
            if not Path(out).is_file():
                failures.append(f"worker {k} on {device} died (exit code {process.exitcode})")
                continue
            # this run's own worker wrote it, into this run's private temporary folder
            with open(out, "rb") as handle:
                predictions, error = pickle.load(handle)
            if error is not None:
                failures.append(f"worker {k} on {device}: {error.strip().splitlines()[-1]}\n{error}")
                continue
            for index, prediction in zip(indices, predictions):
                merged[index] = prediction
    if failures:
        raise ShardError("; ".join(failures))
    return merged
