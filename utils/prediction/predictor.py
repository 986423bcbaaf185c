"""The one predictor: radiographs in, fused opacity boxes and study probabilities out.

:class:`Ensemble` loads every model listed in a weights folder's ``manifest.json`` (written by
training: kind, folds, files, input size, resolved config) and nothing else: no model, size or
threshold is written here. ``make_submission.py``, the Kaggle notebook, the web app and the
benchmark all go through it.

Per image:

1. :func:`decode_test_image` reads the DICOM (or PNG/JPEG) once with the project's reader at the
   largest input size and area-resizes it to each model's size: the same pixels preparation wrote
   to the PNGs the models were trained on. In :meth:`Ensemble.predict_paths` this runs in
   DataLoader workers, one image each, so the device does not wait for decoding.
2. Each member (:mod:`utils.kinds.members`) runs every fold, with its test-time views where the settings ask
   (``tta_hflip``: the detectors' mirror image, boxes flipped back; ``study_tta``: the study model's
   views), and returns one :class:`~utils.ensemble.fusion.MemberPrediction`, merged per image by
   :func:`~utils.ensemble.fusion.add_member_prediction`. A model of weight 0 (``model_weights``) is not loaded.
3. :func:`utils.ensemble.fusion.combine_image` combines the models' outputs, as the out-of-fold report and
   the calibration do: each detector's folds and flips fused, then the detectors fused with their
   weights and score powers (weighted boxes fusion in XYXY_NORM), the classifiers averaged with
   theirs, the boxes rescored by the classifiers' none. In ``predict_paths`` a batch is combined in
   ``fusion_workers`` processes while the models predict the next one.

:mod:`utils.ensemble.assemble` turns the predictions into the submission;
:mod:`utils.data.images_to_predict` finds a test split's files. An image that cannot be read is logged
with its reason and gets a fallback row, so the submission is always complete.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from utils.core.interrupt import dies_with_this_process
from utils.core.plugins import MEMBER_GROUP, plugin_problems
from utils.core.runtime import resolve_device, resolve_precision
from utils.data.boxes import as_boxes
from utils.data.dicom import MAX_PIXELS, DicomReadError, read_radiograph, resize_image
from utils.data.images_to_predict import TestImage
from utils.ensemble.config import EnsembleConfig, ensemble_config
from utils.ensemble.fusion import (
    CombinedImage,
    ImagePrediction,
    MemberOutputs,
    add_member_prediction,
    combine_images,
    fusion_pool,
    resolve_fusion_workers,
)
from utils.ensemble.manifest import ManifestError, entry_files, read_manifest
from utils.kinds.members import MEMBER_TYPES, model_input  # noqa: F401 - model_input: the predictor's input contract

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- decoding


@dataclass
class InputImage:
    """One decoded radiograph: ``pixels[size]`` is the uint8 ``size x size`` image; ``error`` says
    why there are no pixels when it could not be read."""

    image_id: str
    study_id: str
    original_height: int = 0
    original_width: int = 0
    pixels: dict[int, np.ndarray] = field(default_factory=dict)
    error: str | None = None


def decode_test_image(source, sizes: Sequence[int], *, image_id: str, study_id: str = "", name: str | None = None,
                      max_pixels: int | None = None, original_size: tuple[int, int] | None = None,
                      strict: bool = False) -> InputImage:
    """Read ``source`` (path or bytes of a DICOM, PNG or JPEG) once at the largest of ``sizes`` and
    area-resize it to the others, as ``utils.data.decoding_cache.decode_one`` does for the training PNGs. A file the
    reader refuses (:class:`~utils.data.dicom.DicomReadError`: damaged, not an image, no decoder installed)
    gives a result with the reason in ``error``, unless ``strict``, where the error reaches the caller
    (:class:`~utils.data.dicom.ImageSizeError` for a refused shape). Any other exception is a bug and is
    raised. ``original_size`` (height, width) replaces the file's own for a resized copy of a radiograph."""
    try:
        radiograph = read_radiograph(source, max(sizes), max_pixels=max_pixels, name=name)
    except DicomReadError as err:
        if strict:
            raise
        return InputImage(image_id, study_id, error=err.reason)
    pixels = {int(size): resize_image(radiograph.pixels, int(size)) for size in sizes}
    height, width = original_size or (radiograph.original_height, radiograph.original_width)
    return InputImage(image_id, study_id, int(height), int(width), pixels)


class InputImageDataset(Dataset):
    """Test radiographs (:class:`TestImage`, or DICOM paths in the competition's layout), decoded for
    the ensemble."""

    def __init__(self, images: Sequence, sizes: Sequence[int]):
        self.images = [i if isinstance(i, TestImage) else TestImage.from_dicom_path(i) for i in images]
        self.sizes = tuple(sizes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> InputImage:
        image = self.images[index]
        size = (image.original_height, image.original_width) if image.original_height else None
        return decode_test_image(image.path, self.sizes, image_id=image.image_id, study_id=image.study_id,
                                 original_size=size, max_pixels=MAX_PIXELS)


def _single_image(item: InputImage) -> InputImage:
    return item


def decoded_batches(images: Sequence, sizes: Sequence[int], batch_size: int,
                    workers: int) -> Iterator[list[InputImage]]:
    """Batches of decoded test images (:class:`InputImageDataset`), in order. With ``workers``, each
    process decodes single images (not whole batches), so a batch is ready after
    ``batch_size / workers`` decodes and all workers stay busy; about two batches are decoded ahead."""
    workers = min(workers, len(images))  # a process per image at most: the others would decode nothing
    prefetch = max(2, -(-2 * batch_size // workers)) if workers else None
    loader = DataLoader(InputImageDataset(images, sizes), batch_size=None, num_workers=workers,
                        collate_fn=_single_image, prefetch_factor=prefetch,
                        worker_init_fn=dies_with_this_process() if workers else None)
    batch: list[InputImage] = []
    for image in loader:
        batch.append(image)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# ----------------------------------------------------------------------------- models


@dataclass
class ModelOutputs:
    """What the models said about a batch before they are combined: per readable image its
    :class:`~utils.ensemble.fusion.MemberOutputs` (with an opacity map when asked for and a member has one)."""

    images: list[InputImage]
    readable: list[InputImage]
    members: list[MemberOutputs]

    def predictions(self, combined: list[CombinedImage]) -> list[ImagePrediction]:
        """One :class:`ImagePrediction` per image in order, given each readable image's
        :func:`~utils.ensemble.fusion.combine_image`; an unreadable one carries its error."""
        results = {}
        for image, outputs, found in zip(self.readable, self.members, combined):
            results[id(image)] = ImagePrediction(
                image.image_id, image.study_id, image.original_height, image.original_width, found.boxes,
                found.scores, found.study_probs, found.none_prob, opacity_map=outputs.opacity_map)
        return [results.get(id(image)) or ImagePrediction(image.image_id, image.study_id, 0, 0, as_boxes([]),
                                                          np.zeros(0), error=image.error) for image in self.images]


def checked_manifest(weights_dir, config: EnsembleConfig | None = None,
                     overrides: dict | None = None) -> tuple[dict, EnsembleConfig]:
    """The manifest of ``weights_dir`` and the ensemble settings, checked without loading a model: at
    least one model, each of a known kind with its files inside the folder, ``model_weights`` naming
    only models it has."""
    weights_dir = Path(weights_dir)
    manifest = read_manifest(weights_dir, must_exist=True)
    if not manifest["models"]:
        raise ManifestError(f"{weights_dir / 'manifest.json'}: no trained models (run train/train_all.py)")
    config = config or ensemble_config(manifest, overrides, str(weights_dir / "manifest.json"))
    for name, spec in sorted(manifest["models"].items()):
        if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str) or spec["kind"] not in MEMBER_TYPES:
            kind = spec.get("kind") if isinstance(spec, dict) else spec
            raise ManifestError(f"{weights_dir / 'manifest.json'}: model {name!r}: unknown kind {kind!r}; "
                                f"known: {sorted(MEMBER_TYPES)}"
                                + "".join(f"; {problem}" for problem in plugin_problems(MEMBER_GROUP)))
        entry_files(weights_dir, name, spec)
    for key in ("model_weights", "score_powers"):
        unknown = sorted(set(getattr(config, key)) - set(manifest["models"]))
        if unknown:
            raise ManifestError(f"{key} name models not in the manifest: {unknown}")
    if all(config.model_weights.get(name, 1.0) <= 0 for name in manifest["models"]):
        raise ManifestError("model_weights leave out every model")
    return manifest, config


def with_folds(manifest: dict, folds: Sequence[int], weights_dir) -> dict:
    """The manifest with every model restricted to ``folds``."""
    models = {}
    for name, spec in manifest["models"].items():
        kept = [f for f in spec["folds"] if f in set(folds)]
        if not kept:
            raise ManifestError(f"{Path(weights_dir) / 'manifest.json'}: model {name!r} has none of the folds "
                                f"{sorted(folds)} (it has {spec['folds']})")
        models[name] = {**spec, "folds": kept}
    return {**manifest, "models": models}


class Ensemble:
    """Every model of ``weights_dir/manifest.json``, ready to predict (see the module docstring)."""

    def __init__(self, weights_dir, config: EnsembleConfig | None = None, overrides: dict | None = None,
                 folds: Sequence[int] | None = None):
        """``folds``: only these folds of every model (the pseudo-label stage labels with each round-one
        fold alone); a model without one of them is a ManifestError."""
        self.weights_dir = Path(weights_dir)
        manifest, self.config = checked_manifest(self.weights_dir, config, overrides)
        if folds is not None:
            manifest = with_folds(manifest, folds, self.weights_dir)
        self.device = resolve_device(self.config.device)
        self.devices = (self.device,)
        self.precision = resolve_precision(self.config.amp, self.device)
        started = time.perf_counter()
        dropped = sorted(name for name in manifest["models"] if self.config.model_weights.get(name, 1.0) <= 0)
        if dropped:
            log.info("left out (model_weights 0): %s", ", ".join(dropped))
        self.members = [MEMBER_TYPES[spec["kind"]](name, spec, self.weights_dir, self.device)
                        for name, spec in sorted(manifest["models"].items()) if name not in dropped]
        if self.config.channels_last:
            for member in self.members:
                member.set_channels_last(True)
        self.load_seconds = time.perf_counter() - started
        self._fusion: tuple[int, object] | None = None  # (workers, pool), started by the first predict_paths
        log.info("ensemble of %s on %s (%s) loaded in %.1f s",
                 ", ".join(f"{m.name} ({len(m.folds)} fold(s), {m.input_size} px)" for m in self.members),
                 self.device, "mixed precision" if self.precision.enabled else "full precision", self.load_seconds)

    def fusion_executor(self):
        """The fusion processes of ``config.fusion_workers`` (:func:`utils.ensemble.fusion.fusion_pool`), started
        once and kept for later calls (their start-up, a second or more, is paid once); :meth:`close`
        stops them."""
        workers = resolve_fusion_workers(self.config, self.device.type)
        if self._fusion is None or self._fusion[0] != workers:
            self.close()
            self._fusion = workers, fusion_pool(workers)
        return self._fusion[1]

    def close(self) -> None:
        """Stop the fusion processes, if any were started."""
        if self._fusion is not None:
            self._fusion[1].shutdown()
            self._fusion = None

    def __enter__(self) -> "Ensemble":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def sizes(self) -> tuple[int, ...]:
        """The input sizes of the models: what each image is decoded to."""
        return tuple(sorted({m.input_size for m in self.members}))

    @property
    def has_opacity_map(self) -> bool:
        """Whether a study model has the auxiliary segmentation head (``with_opacity_map`` gives maps)."""
        return any(m.has_opacity_map for m in self.members)

    def device_batch(self, images: list[InputImage], size: int) -> torch.Tensor:
        array = np.stack([image.pixels[size] for image in images])
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def run_models(self, images: list[InputImage], with_opacity_map: bool = False) -> "ModelOutputs":
        """Every model on the readable ``images`` (on the device): their outputs, not yet combined."""
        readable = [image for image in images if image.error is None]
        outputs = ModelOutputs(images, readable, [MemberOutputs() for _ in readable])
        if not readable:
            return outputs
        batches = {size: self.device_batch(readable, size) for size in self.sizes}
        for member in self.members:
            add_member_prediction(outputs.members, member.name,
                                  member.predict(batches[member.input_size], member.uses_tta(self.config),
                                                 self.precision, with_opacity_map))
        return outputs

    def predict_batch(self, images: list[InputImage], with_opacity_map: bool = False) -> list[ImagePrediction]:
        """Predictions for decoded images, in their order (unreadable ones carry their error);
        ``with_opacity_map`` adds the study model's opacity map where it has the auxiliary head."""
        outputs = self.run_models(images, with_opacity_map)
        return outputs.predictions(combine_images(outputs.members, self.config))

    def predict_paths(self, paths: Sequence, *, batch_size: int | None = None, workers: int | None = None,
                      progress: bool = True, on_batch=None) -> list[ImagePrediction]:
        """Predictions for test images (:class:`TestImage`, or DICOM paths in the competition's layout),
        in their order; ``on_batch(n)`` is called after each batch of n images.

        Three stages overlap: ``workers`` processes decode the next images (:func:`decoded_batches`),
        the models predict this batch on the device, and ``fusion_workers`` processes fuse the boxes
        of the batches before it (at most two batches wait for their fusion)."""
        from tqdm import tqdm

        batch_size = batch_size or self.config.batch_size
        workers = self.config.workers if workers is None else workers
        predictions: list[ImagePrediction] = []
        waiting: deque = deque()  # (model outputs, fusion future) in order

        def finish_oldest():
            outputs, fused = waiting.popleft()
            predictions.extend(outputs.predictions(fused.result()))
            bar.update(len(outputs.images))
            if on_batch is not None:
                on_batch(len(outputs.images))

        pool = self.fusion_executor()
        with tqdm(total=len(paths), desc="predict", unit="image", disable=not progress) as bar:
            for images in decoded_batches(paths, self.sizes, batch_size, workers):
                for image in images:
                    if image.error is not None:
                        log.warning("unreadable, fallback prediction: %s: %s", image.image_id, image.error)
                outputs = self.run_models(images)
                waiting.append((outputs, pool.submit(combine_images, outputs.members, self.config)))
                while waiting and (len(waiting) > 2 or waiting[0][1].done()):
                    finish_oldest()
            while waiting:
                finish_oldest()
        return predictions

    def predict_source(self, source, *, image_id: str = "upload", name: str | None = None,
                       max_pixels: int | None = None, with_opacity_map: bool = False,
                       strict: bool = False) -> ImagePrediction:
        """One radiograph given as a path or bytes (the web app); errors are in the result's ``error``,
        or raised with ``strict`` (see :func:`decode_test_image`)."""
        image = decode_test_image(source, self.sizes, image_id=image_id, name=name, max_pixels=max_pixels,
                                  strict=strict)
        return self.predict_batch([image], with_opacity_map)[0]

    def describe(self) -> dict:
        return {"weights_dir": str(self.weights_dir), "device": str(self.device), "config": asdict(self.config),
                "models": {m.name: {"kind": m.kind, "folds": m.folds, "input_size": m.input_size}
                           for m in self.members}}
