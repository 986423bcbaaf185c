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
2. Each model runs every fold, on the image and (``tta_hflip``) on its mirror image, whose boxes are
   flipped back. Classifier probabilities are averaged over folds and flips. A model of weight 0
   (``model_weights``) is not run.
3. :func:`utils.fusion.combine_image` combines the models' outputs, as the out-of-fold report and
   the calibration do: each detector's folds and flips fused, then the detectors fused with their
   weights and score powers (weighted boxes fusion in XYXY_NORM), the classifiers averaged with
   theirs, the boxes rescored by the classifiers' none. In ``predict_paths`` a batch is combined in
   ``fusion_workers`` processes while the models predict the next one.

:func:`assemble_submission` then averages the image probabilities over each study, blends each
image's "none" signals (classifier, its study's negative probability, its boxes) and each study's
negative with its images' boxes, maps the boxes back to the original DICOM pixels and writes one
row per id of the sample submission. An image that cannot be read is logged with its reason and
gets a fallback row, so the submission is always complete.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from utils.boxes import as_boxes, denormalize_xyxy
from utils.config import from_mapping
from utils.dicom import NO_DECODER, DicomReadError, read_radiograph, resize_image, unreadable_group
from utils.fusion import (
    CombinedImage,
    EnsembleConfig,
    MemberOutputs,
    blend_none,
    combine_images,
    fusion_pool,
    resolve_fusion_workers,
)
from utils.labels import IMAGE_SUFFIX, STUDY_CLASSES, STUDY_SUFFIX, strip_suffix
from utils.manifest import ManifestError, entry_files, read_manifest
from utils.members import MEMBER_TYPES, model_input  # noqa: F401 - model_input: the predictor's input contract
from utils.runtime import resolve_device, resolve_precision
from utils.submission import (
    SubmissionError,
    check_output_path,
    image_prediction_string,
    sample_problems,
    study_prediction_string,
    write_submission,
)

log = logging.getLogger(__name__)

SECTION = "ensemble"
NEGATIVE = STUDY_CLASSES.index("negative")
# A study none of whose images could be read: every class equally likely (no information).
UNINFORMED_STUDY = np.full(len(STUDY_CLASSES), 1.0 / len(STUDY_CLASSES))
UNINFORMED_NONE = 0.5


def ensemble_config(manifest: dict, overrides: dict | None = None, source: str = "manifest") -> EnsembleConfig:
    """The manifest's ``ensemble`` section (defaults where it has none) with ``overrides`` on top. A
    section without ``study_tta`` (written before 2026-12) takes it from ``tta_hflip``, which switched both."""
    section = dict(manifest.get(SECTION, {}))
    if "study_tta" not in section and "tta_hflip" in section:
        section["study_tta"] = section["tta_hflip"]
    mapping = {**section, **(overrides or {})}
    return from_mapping(EnsembleConfig, mapping, f"{source} [{SECTION}]")


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


@dataclass(frozen=True)
class TestImage:
    """One test radiograph to predict: its file, ids and, for a resized copy, its ORIGINAL size (a
    DICOM gives its own: 0 means "from the file"), which the boxes are written in."""

    path: Path
    image_id: str
    study_id: str
    original_height: int = 0
    original_width: int = 0

    @classmethod
    def from_dicom_path(cls, path) -> "TestImage":
        """A DICOM in the competition's ``<study>/<series>/<image>.dcm`` layout."""
        path = Path(path)
        return cls(path, path.stem, path.parent.parent.name)


def decode_test_image(source, sizes: Sequence[int], *, image_id: str, study_id: str = "", name: str | None = None,
                      max_pixels: int | None = None, original_size: tuple[int, int] | None = None,
                      strict: bool = False) -> InputImage:
    """Read ``source`` (path or bytes of a DICOM, PNG or JPEG) once at the largest of ``sizes`` and
    area-resize it to the others, as ``utils.prepare.decode_one`` does for the training PNGs. A file the
    reader refuses (:class:`~utils.dicom.DicomReadError`: damaged, not an image, no decoder installed)
    gives a result with the reason in ``error``, unless ``strict``, where the error reaches the caller
    (:class:`~utils.dicom.ImageSizeError` for a refused shape). Any other exception is a bug and is
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
                                 original_size=size)


def _single_image(item: InputImage) -> InputImage:
    return item


def decoded_batches(images: Sequence, sizes: Sequence[int], batch_size: int,
                    workers: int) -> Iterator[list[InputImage]]:
    """Batches of decoded test images (:class:`InputImageDataset`), in order. With ``workers``, each
    process decodes single images (not whole batches), so a batch is ready after
    ``batch_size / workers`` decodes and all workers stay busy; about two batches are decoded ahead."""
    prefetch = max(2, -(-2 * batch_size // workers)) if workers else None
    loader = DataLoader(InputImageDataset(images, sizes), batch_size=None, num_workers=workers,
                        collate_fn=_single_image, prefetch_factor=prefetch)
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
class ImagePrediction:
    """What the ensemble says about one image. ``boxes`` XYXY_NORM (of the original image) with
    ``scores``, highest first; ``study_probs`` (4,) and ``none_prob`` from the study classifier
    (None without one, or when the image could not be read: ``error``)."""

    image_id: str
    study_id: str
    original_height: int
    original_width: int
    boxes: np.ndarray
    scores: np.ndarray
    study_probs: np.ndarray | None = None
    none_prob: float | None = None
    error: str | None = None
    opacity_map: np.ndarray | None = None  # (h, w) in [0, 1] over the image, when asked and available


@dataclass
class ModelOutputs:
    """What the models said about a batch before they are combined: per readable image its
    :class:`~utils.fusion.MemberOutputs`, and the study model's opacity maps when asked for."""

    images: list[InputImage]
    readable: list[InputImage]
    members: list[MemberOutputs]
    maps: list | None = None

    def predictions(self, combined: list[CombinedImage]) -> list[ImagePrediction]:
        """One :class:`ImagePrediction` per image in order, given each readable image's
        :func:`~utils.fusion.combine_image`; an unreadable one carries its error."""
        results = {}
        for k, (image, found) in enumerate(zip(self.readable, combined)):
            results[id(image)] = ImagePrediction(
                image.image_id, image.study_id, image.original_height, image.original_width, found.boxes,
                found.scores, found.study_probs, found.none_prob,
                opacity_map=None if self.maps is None else self.maps[k])
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
        if not isinstance(spec, dict) or spec.get("kind") not in MEMBER_TYPES:
            kind = spec.get("kind") if isinstance(spec, dict) else spec
            raise ManifestError(f"{weights_dir / 'manifest.json'}: model {name!r}: unknown kind {kind!r}; "
                                f"known: {sorted(MEMBER_TYPES)}")
        entry_files(weights_dir, name, spec)
    for key in ("model_weights", "score_powers"):
        unknown = sorted(set(getattr(config, key)) - set(manifest["models"]))
        if unknown:
            raise ManifestError(f"{key} name models not in the manifest: {unknown}")
    if all(config.model_weights.get(name, 1.0) <= 0 for name in manifest["models"]):
        raise ManifestError("model_weights leave out every model")
    return manifest, config


class Ensemble:
    """Every model of ``weights_dir/manifest.json``, ready to predict (see the module docstring)."""

    def __init__(self, weights_dir, config: EnsembleConfig | None = None, overrides: dict | None = None):
        self.weights_dir = Path(weights_dir)
        manifest, self.config = checked_manifest(self.weights_dir, config, overrides)
        self.device = resolve_device(self.config.device)
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
        """The fusion processes of ``config.fusion_workers`` (:func:`utils.fusion.fusion_pool`), started
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
        return any(getattr(m, "has_opacity_map", False) for m in self.members)

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
            if not member.predicts_boxes:
                study, none, maps = member.predict(batches[member.input_size], member.uses_tta(self.config),
                                                   self.precision, with_opacity_map)
                for k, image in enumerate(outputs.members):
                    image.classifiers[member.name] = (study[k], float(none[k]))
                if outputs.maps is None and maps is not None:
                    outputs.maps = maps
                continue
            found = member.predict(batches[member.input_size], member.uses_tta(self.config), self.precision)
            for image, sources in zip(outputs.members, found):
                image.boxes[member.name] = list(sources)
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


# ----------------------------------------------------------------------------- submission


def no_box_probability(prediction: ImagePrediction) -> float | None:
    """One minus the image's best fused opacity score (1 without any box): the detectors' view of
    "no opacity here"; None when the image could not be read."""
    if prediction.error is not None:
        return None
    return float(1.0 - prediction.scores.max()) if len(prediction.scores) else 1.0


def image_none_probability(prediction: ImagePrediction, study_negative: float | None,
                           config: EnsembleConfig) -> float:
    """The image's none probability: the weighted mean (:func:`utils.fusion.blend_none`) of the study
    classifier's none output, its study's negative probability (classifier) and
    :func:`no_box_probability`; uninformed (0.5) without any signal."""
    blended = blend_none([prediction.none_prob, study_negative, no_box_probability(prediction)],
                         [config.none_classifier_weight, config.none_study_weight, config.none_boxes_weight])
    return UNINFORMED_NONE if blended is None else blended


def _study_means(predictions: Sequence[ImagePrediction]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per study: the mean classifier probabilities of its images, and the mean no-box probability."""
    probs: dict[str, list[np.ndarray]] = {}
    no_box: dict[str, list[float]] = {}
    for p in predictions:
        if p.study_probs is not None:
            probs.setdefault(p.study_id, []).append(p.study_probs)
        value = no_box_probability(p)
        if value is not None:
            no_box.setdefault(p.study_id, []).append(value)
    return ({k: np.mean(v, axis=0) for k, v in probs.items()}, {k: float(np.mean(v)) for k, v in no_box.items()})


def study_row_probabilities(classifier: np.ndarray | None, no_box: float | None,
                            config: EnsembleConfig) -> np.ndarray:
    """A study's four probabilities: the classifier's (uniform without one), with "negative" the
    weighted mean of the classifier's negative and the images' mean no-box probability (a study
    whose images show no opacity is likely negative). The four are ranked per class by the metric,
    so they are not renormalised."""
    probs = np.array(UNINFORMED_STUDY if classifier is None else classifier, dtype=np.float64)
    negative = blend_none([None if classifier is None else float(classifier[NEGATIVE]), no_box],
                          [config.negative_classifier_weight, config.negative_boxes_weight])
    if negative is not None:
        probs[NEGATIVE] = negative
    return probs


def assemble_submission(predictions: Sequence[ImagePrediction], sample: pd.DataFrame,
                        config: EnsembleConfig) -> pd.DataFrame:
    """One row per id of ``sample`` in its order. Studies: :func:`study_row_probabilities` of the mean
    over their readable images (uniform when none was readable). Images: fused boxes in original
    pixels plus the blended none (:func:`image_none_probability`); an image without a prediction
    gets ``none`` only."""
    classifier, no_box = _study_means(predictions)
    by_image = {p.image_id: p for p in predictions}
    rows = []
    for identifier in sample["id"].astype(str):
        if identifier.endswith(STUDY_SUFFIX):
            study_id = identifier[: -len(STUDY_SUFFIX)]
            if study_id in classifier or study_id in no_box:
                probs = study_row_probabilities(classifier.get(study_id), no_box.get(study_id), config)
            else:
                probs = UNINFORMED_STUDY
            rows.append(study_prediction_string(dict(zip(STUDY_CLASSES, probs))))
            continue
        prediction = by_image.get(identifier[: -len(IMAGE_SUFFIX)])
        if prediction is None:
            rows.append(image_prediction_string([], [], UNINFORMED_NONE, 1.0, 1.0))
            continue
        study = classifier.get(prediction.study_id)
        none = image_none_probability(prediction, None if study is None else float(study[NEGATIVE]), config)
        if prediction.error is not None or not len(prediction.scores):
            rows.append(image_prediction_string([], [], none, 1.0, 1.0))
            continue
        width, height = float(prediction.original_width), float(prediction.original_height)
        rows.append(image_prediction_string(denormalize_xyxy(prediction.boxes, width, height), prediction.scores,
                                            none, width, height))
    return pd.DataFrame({"id": sample["id"].astype(str).tolist(), "PredictionString": rows})


def find_test_dicoms(data_dir, sample: pd.DataFrame) -> list[TestImage]:
    """The test split's DICOMs (``test/<study>/<series>/<image>.dcm``); logs sample images without a file."""
    from utils.inputs import find_dicoms

    paths = find_dicoms(Path(data_dir) / "test")
    wanted = {i[: -len(IMAGE_SUFFIX)] for i in sample["id"].astype(str) if i.endswith(IMAGE_SUFFIX)}
    _warn_missing(wanted, {p.stem for p in paths}, Path(data_dir) / "test")
    return [TestImage.from_dicom_path(p) for p in paths if p.stem in wanted or not wanted]


class NoTestImagesError(FileNotFoundError):
    """Not one image of the sample submission was found: a wrong folder, not a few bad files."""


def _warn_missing(wanted: set, found: set, where: Path) -> None:
    """Fail when no wanted image has a file (a submission of fallback rows scores zero, found out
    hours later on Kaggle); warn loudly with counts and examples when some are missing."""
    missing = sorted(wanted - found)
    if wanted and len(missing) == len(wanted):
        raise NoTestImagesError(
            f"{where}: none of the {len(wanted)} images of the sample submission was found ({len(found)} image "
            f"files there, e.g. {sorted(found)[:3]}; wanted e.g. {missing[:3]}). Is this the competition's test "
            f"folder (test/<study>/<series>/<image>.dcm)?")
    if missing:
        log.warning("%d of %d image(s) of the sample submission (%.0f%%) have no file under %s: they get fallback "
                    "rows; e.g. %s", len(missing), len(wanted), 100 * len(missing) / len(wanted), where, missing[:5])


def read_test_table(path) -> pd.DataFrame:
    """A table of test images and their studies (``image_id``/``imageid``, ``study_id``/``studyid``,
    as ``test_meta.csv`` of the public solutions) -> columns ``image_id, study_id``."""
    from utils.inputs import read_id_table

    table = read_id_table(path, ("image_id", "study_id"), what="test image table")
    table["image_id"] = [strip_suffix(i, IMAGE_SUFFIX) for i in table["image_id"]]
    table["study_id"] = [strip_suffix(i, STUDY_SUFFIX) for i in table["study_id"]]
    return table


def find_resized_test_images(data_dir, test_table, sample: pd.DataFrame | None) -> tuple[pd.DataFrame, list[TestImage]]:
    """A resized copy's test split: ``data_dir/test/<image_id>.jpg|png``, the studies from ``test_table``
    (:func:`read_test_table`) and the original sizes from ``data_dir/meta.csv`` (split ``test``).
    Returns the sample (``sample``, or one row per study and per image of the table, studies first)
    and the images to predict. An image without a file or an original size is logged and gets a
    fallback row."""
    from utils.inputs import find_resized_images, read_resized_meta

    data_dir = Path(data_dir)
    table = read_test_table(test_table)
    if sample is None:
        studies = list(dict.fromkeys(table["study_id"]))
        ids = [s + STUDY_SUFFIX for s in studies] + [i + IMAGE_SUFFIX for i in table["image_id"]]
        sample = pd.DataFrame({"id": ids, "PredictionString": ""})
    files = find_resized_images(data_dir / "test")
    sizes, bad_rows, _ = read_resized_meta(data_dir, "test")
    for where, reason in bad_rows:
        log.warning("%s: %s (fallback row)", where, reason)
    size_of = {r.image_id: (r.original_height, r.original_width) for r in sizes.itertuples(index=False)}
    wanted = {i[: -len(IMAGE_SUFFIX)] for i in sample["id"].astype(str) if i.endswith(IMAGE_SUFFIX)}
    _warn_missing(wanted, set(files), data_dir / "test")
    no_size = sorted((wanted & set(files)) - set(size_of))
    if no_size:
        log.warning("%d test image(s) have no original size in %s (fallback rows), e.g. %s", len(no_size),
                    data_dir / "meta.csv", no_size[:3])
    images = [TestImage(files[i], i, s, *size_of[i]) for i, s in zip(table["image_id"], table["study_id"])
              if i in wanted and i in files and i in size_of]
    return sample, images


def find_test_images(data_dir, test_table=None) -> tuple[pd.DataFrame, list[TestImage]]:
    """``(sample submission, images to predict)`` of either kind of test folder: the competition's
    (``sample_submission.csv`` + DICOMs) or a resized copy's (``test/<image_id>.jpg|png`` +
    ``meta.csv`` with original sizes + ``test_table`` mapping images to studies)."""
    from utils.inputs import is_resized_copy

    data_dir = Path(data_dir)
    sample_path = data_dir / "sample_submission.csv"
    sample = pd.read_csv(sample_path, dtype=str) if sample_path.is_file() else None
    if is_resized_copy(data_dir):
        if test_table is None:
            raise FileNotFoundError(f"{data_dir} is a resized copy: give the table of its test images and studies "
                                    "(--test-meta, e.g. test_meta.csv with imageid and studyid)")
        return find_resized_test_images(data_dir, test_table, sample)
    if sample is None:
        raise FileNotFoundError(f"{sample_path}: not found (is {data_dir} the competition folder?)")
    return sample, find_test_dicoms(data_dir, sample)


class TooManyUnreadableError(RuntimeError):
    """More test images unreadable than ``max_unreadable_share``: no submission was written."""


def unreadable_summary(failed: dict[str, str], images: int) -> dict:
    """The unreadable images counted: ``count``, ``share`` of ``images`` and ``groups`` by kind of reason
    (:func:`utils.dicom.unreadable_group`), each with its count, up to three image ids and, for a missing
    decoder, what pydicom needs installed."""
    groups: dict[str, dict] = {}
    for image_id, reason in failed.items():
        group = groups.setdefault(unreadable_group(reason), {"count": 0, "examples": [], "install": None})
        group["count"] += 1
        if len(group["examples"]) < 3:
            group["examples"].append(image_id)
        if reason.startswith(NO_DECODER):
            group["install"] = reason.split(": ", 1)[-1]
    ordered = dict(sorted(groups.items(), key=lambda item: -item[1]["count"]))
    return {"count": len(failed), "share": len(failed) / max(images, 1), "images": images, "groups": ordered}


def describe_unreadable(summary: dict) -> str:
    """One line: ``unreadable: 3 of 1263 images (0.2%): truncated 2; not a DICOM file 1``."""
    head = f"unreadable: {summary['count']} of {summary['images']} images ({100 * summary['share']:.1f}%)"
    if not summary["count"]:
        return head
    parts = [f"{name} {group['count']}" + (f" (install: {group['install']})" if group["install"] else "")
             for name, group in summary["groups"].items()]
    return f"{head}: {'; '.join(parts)}"


def write_ensemble_submission(ensemble, data_dir, out, *, batch_size: int | None = None,
                              workers: int | None = None, progress: bool = True, test_table=None,
                              allow_unreadable: bool = False) -> dict:
    """Predict the test split of ``data_dir`` (:func:`find_test_images`) with ``ensemble`` (an
    :class:`Ensemble`, or :class:`infer.sharding.ShardedEnsemble` for several devices) and write the
    validated submission to ``out``. Returns a summary: rows, images, unreadable images with their
    reasons and :func:`unreadable_summary`, seconds, device. More unreadable images than the config's
    ``max_unreadable_share`` raise :class:`TooManyUnreadableError` before anything is written, unless
    ``allow_unreadable``."""
    check_output_path(out)
    sample, images = find_test_images(data_dir, test_table)
    problems = sample_problems(sample)
    if problems:
        raise SubmissionError(problems, where=f"{data_dir} sample submission")
    started = time.perf_counter()
    predictions = ensemble.predict_paths(images, batch_size=batch_size, workers=workers, progress=progress)
    failed = {p.image_id: p.error for p in predictions if p.error is not None}
    counted = unreadable_summary(failed, len(images))
    limit = ensemble.config.max_unreadable_share
    if counted["share"] > limit and not allow_unreadable:
        raise TooManyUnreadableError(
            f"{describe_unreadable(counted)}; that is more than max_unreadable_share {100 * limit:g}%, so no "
            f"submission was written to {out}. Fix the reason (a missing decoder is a package to install), or "
            f"write it anyway with --allow-unreadable (each unreadable image gets a fallback row)")
    submission = assemble_submission(predictions, sample, ensemble.config)
    write_submission(submission, out, sample=sample)
    seconds = time.perf_counter() - started
    return {"out": str(out), "rows": len(submission), "images": len(images), "unreadable": failed,
            "unreadable_summary": counted, "seconds": seconds, "seconds_per_image": seconds / max(len(images), 1),
            "device": str(ensemble.device)}
