"""Speed measured: the reader, a training step, the grey-input stem, the ensemble end to end and the
web app, each the median of repeats beside its baseline; untrained weights folders for measuring
without a training run (the benchmarks, the GPU check, the Kaggle check). ``python infer/benchmark.py``
runs them."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import torch
from pydicom.pixels import apply_voi_lut

from utils.core.runtime import resolve_device, resolve_precision
from utils.data.chest_renderer import render_chest
from utils.data.dicom import lenient_dicom_values, read_dicom, read_dicom_header
from utils.data.dicom_writer import display_to_stored, write_dicom
from utils.data.nih import NIH_FINDINGS
from utils.ensemble.config import ENSEMBLE_SECTION
from utils.kinds.backbone.network import MultiLabelClassifier
from utils.kinds.study.network import StudyClassifier
from utils.nets.models import PRETRAINED_NONE
from utils.training.distributed import DistInfo
from utils.training.loaders import collate_skip_none, make_loader
from utils.training.loop import TrainConfig, build_optimizer, lr_factor, train_one_epoch


def copied_recipe(path, size: int) -> np.ndarray:
    """The recipe found in most public notebooks of this competition (the baseline), with area resize."""
    with lenient_dicom_values():
        ds = pydicom.dcmread(path)
        data = apply_voi_lut(ds.pixel_array, ds)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            data = np.amax(data) - data
        data = data - np.min(data)
        data = data / np.max(data)
        data = (data * 255).astype(np.uint8)
    return cv2.resize(data, (size, size), interpolation=cv2.INTER_AREA)


def write_full_size_files(folder: Path, count: int, seed: int = 0, scale: float = 1.0) -> list[Path]:
    """Real-size 16-bit radiographs in the competition's common forms (no rescale, so that the
    copied recipe, which ignores the modality rescale, computes the same image); ``scale`` shrinks
    them (tests)."""
    rng = np.random.default_rng(seed)
    forms = [("MONOCHROME2", 12, True), ("MONOCHROME2", 16, False), ("MONOCHROME1", 14, True),
             ("MONOCHROME2", 12, False), ("MONOCHROME1", 12, False), ("MONOCHROME2", 14, True)]
    paths = []
    for k in range(count):
        photometric, bits, windowed = forms[k % len(forms)]
        height, width = int(scale * rng.integers(2300, 2800)), int(scale * rng.integers(2800, 3200))
        stored = display_to_stored(render_chest(rng, height, width), bits_stored=bits, photometric=photometric)
        top = (1 << bits) - 1
        window = (top * 0.5, top * 0.8) if windowed else None
        paths.append(write_dicom(folder / f"full_{k}.dcm", stored, photometric=photometric, bits_stored=bits,
                                 window=window))
    return paths


def _timed_pass(function, paths, size) -> tuple[float, list[np.ndarray]]:
    start = time.perf_counter()
    outputs = [function(p, size) for p in paths]
    return time.perf_counter() - start, outputs


def benchmark_reader(files: int = 6, repeats: int = 5, size: int = 1024) -> dict:
    cv2.setNumThreads(1)  # per-core figures for both sides
    with tempfile.TemporaryDirectory() as folder:
        paths = write_full_size_files(Path(folder), files)
        ours = lambda p, s: read_dicom(p, s).pixels  # noqa: E731
        _, reference = _timed_pass(copied_recipe, paths, size)  # warm the page cache
        _, project = _timed_pass(ours, paths, size)
        baseline_times, project_times = [], []
        for _ in range(repeats):
            baseline_times.append(_timed_pass(copied_recipe, paths, size)[0])
            project_times.append(_timed_pass(ours, paths, size)[0])
        example = read_dicom_header(paths[0])
    differences = [float(np.abs(a.astype(int) - b.astype(int)).mean()) for a, b in zip(project, reference)]
    baseline_rate = files / statistics.median(baseline_times)
    project_rate = files / statistics.median(project_times)
    return {
        "benchmark": "reader",
        "files": files,
        "repeats": repeats,
        "example_size": [example.rows, example.columns],
        "output_size": size,
        "threads": 1,
        "baseline_images_per_s": round(baseline_rate, 2),
        "project_images_per_s": round(project_rate, 2),
        "speedup": round(project_rate / baseline_rate, 2),
        "mean_abs_difference_grey_levels": round(float(np.mean(differences)), 3),
        "max_mean_abs_difference_grey_levels": round(max(differences), 3),
    }


class _RandomImages(torch.utils.data.Dataset):
    """``n`` random images and multi-hot targets, made once (engine item format)."""

    def __init__(self, n: int, image_size: int, n_outputs: int):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, image_size, image_size, generator=generator)
        self.targets = (torch.rand(n, n_outputs, generator=generator) > 0.8).float()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.targets[index], index


def benchmark_training(arch: str = "resnext50_32x4d", image_size: int = 224, batch_size: int = 32, steps: int = 20,
                       repeats: int = 5, amp: str | None = None, device_name: str = "auto") -> dict:
    device = resolve_device(device_name)
    amp = amp or ("fp16" if device.type == "cuda" else "bf16")
    modes = {"fp32": resolve_precision("off", device), amp: resolve_precision(amp, device)}
    config = TrainConfig(batch_size=batch_size, workers=0, device=str(device))
    loader = make_loader(_RandomImages(batch_size * steps, image_size, len(NIH_FINDINGS)), batch_size, train=True,
                         seed=0, info=DistInfo(), workers=0, collate_fn=collate_skip_none)
    rates = {mode: [] for mode in modes}
    torch.manual_seed(0)
    model = MultiLabelClassifier(len(NIH_FINDINGS), arch, None).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    for repeat in range(repeats + 1):  # the first round warms up (cuDNN autotuning, allocator) and is dropped
        for mode, precision in modes.items():
            optimizer = build_optimizer(model, config)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps))
            scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
            result = train_one_epoch(model, loader, optimizer, scheduler, scaler, device, precision, epoch=repeat,
                                     epochs=repeats + 1, progress=False)
            if repeat:
                rates[mode].append(result["images_per_s"])
    baseline, mixed = statistics.median(rates["fp32"]), statistics.median(rates[amp])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return {
        "benchmark": "training",
        "device": where,
        "arch": arch,
        "image_size": image_size,
        "batch_size": batch_size,
        "steps_per_repeat": steps,
        "repeats": repeats,
        "amp": amp,
        "fp32_images_per_s": round(baseline, 2),
        "amp_images_per_s": round(mixed, 2),
        "speedup": round(mixed / baseline, 2),
        "torch": torch.__version__,
    }


def one_channel_stem(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` taking one grey channel: its first 3-channel convolution summed over the input channels
    and its normalisation kept to one channel. The same function of a grey image replicated three
    times when the normalisation is equal on every channel (EfficientNet-Lite's); not for ImageNet's."""
    import copy

    grey = copy.deepcopy(model)
    mean, std = grey.normalize.mean, grey.normalize.std
    if not (torch.all(mean == mean[:, :1]) and torch.all(std == std[:, :1])):
        raise ValueError(f"{grey.normalize.name} normalisation differs per channel: summing the stem changes the model")
    grey.normalize.mean, grey.normalize.std = mean[:, :1], std[:, :1]
    conv = next(module for module in grey.modules() if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3)
    # In place, so subclasses (timm's TF "same"-padding convolution) keep their own forward.
    conv.weight = torch.nn.Parameter(conv.weight.detach().sum(dim=1, keepdim=True))
    conv.in_channels = 1
    return grey


def benchmark_grey_input(arch: str = "timm:tf_efficientnet_lite0", image_size: int = 160, batch_size: int = 16,
                         steps: int = 5, repeats: int = 5) -> dict:
    """The study classifier's training steps on grey radiographs replicated to three channels (what the
    pipeline does) against one channel through a stem convolution summed over its input channels: the
    outputs' largest difference and the median images/s of each, timed alternately in one run."""
    torch.manual_seed(0)
    replicated = StudyClassifier(arch, PRETRAINED_NONE, seg_weight=0.5)
    variants = {"replicated_3ch": replicated, "summed_stem_1ch": one_channel_stem(replicated)}
    grey = torch.rand(batch_size, 1, image_size, image_size)
    inputs = {"replicated_3ch": grey.expand(-1, 3, -1, -1).contiguous(), "summed_stem_1ch": grey}
    with torch.no_grad():
        outputs = {name: model.eval()(inputs[name])["study_logits"] for name, model in variants.items()}
    difference = float((outputs["replicated_3ch"] - outputs["summed_stem_1ch"]).abs().max())
    targets = {"study": torch.zeros(batch_size, dtype=torch.long), "none": torch.zeros(batch_size),
               "mask": torch.zeros(batch_size, image_size, image_size, dtype=torch.uint8),
               "mask_valid": torch.ones(batch_size)}
    rates = {name: [] for name in variants}
    for repeat in range(repeats + 1):  # the first round warms up and is dropped
        for name, model in variants.items():
            model.train()
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
            started = time.perf_counter()
            for _ in range(steps):
                loss = sum(v for k, v in model(inputs[name], targets).items() if k.startswith("loss"))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if repeat:
                rates[name].append(batch_size * steps / (time.perf_counter() - started))
    medians = {name: round(statistics.median(values), 2) for name, values in rates.items()}
    return {"benchmark": "grey-input", "device": f"cpu ({torch.get_num_threads()} threads)", "arch": arch,
            "image_size": image_size, "batch_size": batch_size, "steps_per_repeat": steps, "repeats": repeats,
            "max_logit_difference": difference, **{f"{k}_images_per_s": v for k, v in medians.items()},
            "speedup_1ch": round(medians["summed_stem_1ch"] / medians["replicated_3ch"], 3),
            "torch": torch.__version__}


def write_untrained_weights(weights_dir, config_path, folds: int = 1, overrides: dict | None = None) -> Path:
    """A weights folder with randomly initialised models of every registered kind, as configured in
    ``config_path`` (``overrides``: section -> keys; ``folds`` copies each, in the kind's own weights
    format: :meth:`utils.kinds.ModelKind.untrained_weights`) and its manifest, including the ensemble
    section: the speed of prediction does not depend on what the weights learned."""
    from dataclasses import asdict

    from utils.core.config import load_section, load_yaml_section
    from utils.ensemble.manifest import register_ensemble, register_model
    from utils.kinds.registry import KINDS

    weights_dir = Path(weights_dir)
    overrides = overrides or {}
    torch.manual_seed(0)
    for kind in KINDS.values():
        config = load_section(config_path, kind.name, kind.config_class, overrides.get(kind.name))
        files = {}
        for k in range(folds):
            files[k] = f"{kind.name}/fold{k}.pt"
            (weights_dir / files[k]).parent.mkdir(parents=True, exist_ok=True)
            kind.untrained_weights(config, weights_dir / files[k])
        register_model(weights_dir, kind.name, files, kind.input_size(config), asdict(config))
    ensemble = {**load_yaml_section(config_path, ENSEMBLE_SECTION), **overrides.get(ENSEMBLE_SECTION, {})}
    return register_ensemble(weights_dir, ensemble)


def _median_rate(function, n_images: int, repeats: int, sync) -> float:
    """Images per second of ``function()`` (which handles ``n_images``): median over ``repeats``
    after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - start)
    return n_images / statistics.median(times)


def _end_to_end(ensemble, paths, repeats: int) -> dict:
    """``ensemble.predict_paths`` on the first half of ``paths`` and on all of them, median of
    ``repeats``: the steady rate is the second half's images over the difference of the two times
    (what each call pays once cancels out: decoding workers starting, the pipeline filling and
    draining). A first call on one image starts the ensemble's fusion processes (kept for later
    calls); the start-up reported is that call's time less one image's."""
    start = time.perf_counter()
    ensemble.predict_paths(paths[:1], progress=False)
    first_call = time.perf_counter() - start
    half = len(paths) // 2
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        ensemble.predict_paths(paths[:half], progress=False)
        first = time.perf_counter() - start
        start = time.perf_counter()
        ensemble.predict_paths(paths, progress=False)
        rates.append((len(paths) - half) / max(time.perf_counter() - start - first, 1e-9))
    rate = statistics.median(rates)
    return {"rate": rate, "start_seconds": max(0.0, first_call - 1.0 / rate)}


def benchmark_inference(weights_dir=None, config_path=None, images: int = 8, repeats: int = 3,
                        batch_size: int | None = None, workers: int | None = None, device_name: str | None = None,
                        scale: float = 1.0, work_dir=None, folds: int = 1, fusion_workers: int | None = None,
                        compare_channels_last: bool = False) -> dict:
    """Images per second of every prediction stage and end to end, and the notebook's run time.

    Stages, each the median of ``repeats``: decoding (the project's reader + resizes, one process,
    and ``workers`` DataLoader processes, as the predictor decodes), each model on decoded batches
    already on the device (without and with the flip TTA), weighted boxes fusion in one process,
    and the whole predictor (``Ensemble.predict_paths``: decoding, models and fusion overlapped),
    with its ``fusion_workers`` processes and, the baseline, with the fusion inline. ``models``
    is the models' combined TTA rate, the ceiling end to end can reach. End to end is the steady
    rate (from runs on half and all of the images), its once-per-run start-up beside it. Without
    ``weights_dir`` the models of ``config_path`` are built with random weights, ``folds`` of each.
    ``compare_channels_last`` also times each torch model with the TTA in the other memory layout
    (``ensemble.channels_last``), side by side.
    """
    from dataclasses import replace

    from utils.ensemble.fusion import MemberOutputs, add_member_prediction, combine_images, resolve_fusion_workers
    from utils.prediction.predictor import Ensemble, decoded_batches

    work = Path(work_dir or tempfile.mkdtemp(prefix="bench-inference-"))
    if weights_dir is None:
        weights_dir = write_untrained_weights(work / "weights", config_path, folds).parent
    overrides = {k: v for k, v in (("device", device_name), ("workers", workers), ("batch_size", batch_size),
                                   ("fusion_workers", fusion_workers)) if v is not None}
    ensemble = Ensemble(weights_dir, overrides=overrides)
    config = ensemble.config
    n_fusion = resolve_fusion_workers(config, ensemble.device.type)
    paths = write_full_size_files(work / "dicoms", images, seed=1, scale=scale)
    device = ensemble.device

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def decode(n_workers: int):
        return [image for batch in decoded_batches(paths, ensemble.sizes, config.batch_size, n_workers)
                for image in batch]

    rates = {"decode_1_process": _median_rate(lambda: decode(0), images, repeats, sync)}
    if config.workers:
        rates[f"decode_{config.workers}_workers"] = _median_rate(lambda: decode(config.workers), images, repeats, sync)
    decoded = decode(0)
    batches = [decoded[i:i + config.batch_size] for i in range(0, len(decoded), config.batch_size)]
    on_device = [{size: ensemble.device_batch(batch, size) for size in ensemble.sizes} for batch in batches]
    sources = {}
    seconds_per_image = 0.0
    for member in ensemble.members:
        for tta in (False, True):
            def run(member=member, tta=tta):
                return [member.predict(batch[member.input_size], tta, ensemble.precision) for batch in on_device]
            rates[f"{member.name}{'_tta' if tta else ''}"] = _median_rate(run, images, repeats, sync)
        seconds_per_image += 1.0 / rates[f"{member.name}{'_tta' if member.uses_tta(config) else ''}"]
        if compare_channels_last and member.set_channels_last(not config.channels_last):
            layout = "contiguous" if config.channels_last else "channels_last"
            rates[f"{member.name}_tta_{layout}"] = _median_rate(lambda member=member: run(member, True), images,
                                                                repeats, sync)
            member.set_channels_last(config.channels_last)
        sources[member.name] = run()
    rates["models"] = 1.0 / seconds_per_image
    per_image = [MemberOutputs() for _ in range(images)]
    for name, predictions in sources.items():
        for start, prediction in zip(range(0, images, config.batch_size), predictions):
            add_member_prediction(per_image[start:start + config.batch_size], name, prediction)
    rates["wbf_1_process"] = _median_rate(lambda: combine_images(per_image, config), images, repeats, sync)
    variants = {"end_to_end_inline_fusion": 0}
    if n_fusion:  # the configured run first, the inline fusion its baseline
        variants = {f"end_to_end_{n_fusion}_fusion_workers": n_fusion, **variants}
    end_to_end = {}
    for name, fusion in variants.items():
        ensemble.config = replace(config, fusion_workers=fusion)
        end_to_end[name] = _end_to_end(ensemble, paths, repeats)
        rates[name] = end_to_end[name]["rate"]
    ensemble.config = config
    ensemble.close()
    configured = end_to_end[next(iter(variants))]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return {
        "benchmark": "inference",
        "device": where,
        "precision": str(ensemble.precision.dtype) if ensemble.precision.enabled else "fp32",
        "models": ensemble.describe()["models"],
        "tta_hflip": config.tta_hflip,
        "study_tta": config.study_tta,
        "batch_size": config.batch_size,
        "workers": config.workers,
        "fusion_workers": n_fusion,
        "images": images,
        "image_size": "about 2500 x 3000, 16-bit" if scale == 1.0 else f"scaled by {scale}",
        "repeats": repeats,
        "images_per_s": {k: round(v, 3) for k, v in rates.items()},
        "end_to_end_share_of_models": round(configured["rate"] / rates["models"], 3),
        "end_to_end_start_seconds": {k: round(v["start_seconds"], 2) for k, v in end_to_end.items()},
        "model_load_seconds": round(ensemble.load_seconds, 1),
        # The notebook loads the models once and predicts the whole test split end to end.
        "estimated_notebook_minutes": {
            str(n): round((ensemble.load_seconds + configured["start_seconds"] + n / configured["rate"]) / 60, 1)
            for n in (1263, 6000)},
        "torch": torch.__version__,
    }


def benchmark_serve(weights_dir, requests: int = 50, concurrency: int = 4, image: Path | None = None,
                    device: str = "cpu", work_dir=None) -> dict:
    """A short bounded load check of the web application on loopback: ``requests`` uploads of one
    radiograph, ``concurrency`` at a time, through a real uvicorn server; latencies and errors."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from utils.serving.app import create_app, start_background_server

    if image is None:
        image = write_full_size_files(Path(work_dir or tempfile.mkdtemp(prefix="bench-serve-")), 1, seed=2)[0]
    data = Path(image).read_bytes()
    # as many admitted as sent at once: the check measures latency, not the app's 503 bound
    base, server = start_background_server(create_app(weights_dir, device=device, max_pending=concurrency))
    url = f"{base}/api/predict"

    def one(_):
        start = time.perf_counter()
        response = httpx.post(url, files={"file": (Path(image).name, data)}, timeout=300)
        return time.perf_counter() - start, response.status_code

    try:
        one(0)  # warm-up
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
    finally:
        server.should_exit = True
    latencies = sorted(seconds for seconds, _ in results)
    return {
        "benchmark": "serve",
        "device": device,
        "image": f"{Path(image).name}, {len(data) // 1024} KiB",
        "requests": requests,
        "concurrency": concurrency,
        "errors": sum(1 for _, status in results if status != 200),
        "median_latency_s": round(statistics.median(latencies), 3),
        "p90_latency_s": round(latencies[int(0.9 * (len(latencies) - 1))], 3),
        "requests_per_s": round(requests / wall, 2),
    }
