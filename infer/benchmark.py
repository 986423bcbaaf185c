"""Speed benchmarks: median of repeats, each compared with its baseline in the same run.

    python infer/benchmark.py reader [--files 6] [--repeats 5] [--size 1024] [--out runs/bench/reader.json]
    python infer/benchmark.py training [--arch resnext50_32x4d] [--image-size 224] [--batch-size 32]
        [--steps 20] [--repeats 5] [--amp fp16|bf16] [--device auto] [--out runs/bench/training.json]
    python infer/benchmark.py inference [--weights-dir W | --config train/configs/full.yaml --folds 5] [--images 8]
        [--repeats 3] [--batch-size N] [--workers N] [--fusion-workers N] [--compare-channels-last] [--device auto]
        [--out runs/bench/inference.json]
    python infer/benchmark.py serve --weights-dir W [--requests 50] [--concurrency 4] [--image FILE]
    python infer/benchmark.py loop --prepared PREPARED/meta.csv | --data-dir DIR [--patients TABLE]
        [--config train/configs/real256.yaml]
        [--kinds study frcnn yolo] [--fold 0] [--steps 8] [--repeats 3] [--set SECTION.KEY=VALUE ...]
        [--variant NAME SECTION.KEY=VALUE ... (repeatable)] [--out runs/bench/loop.json]

``reader``: full-size 16-bit DICOMs (about 2500 x 3000, written by the synthetic generator, with and
without a VOI window, MONOCHROME1 and 2) decoded and resized to ``--size`` by the project's reader
and by the widely copied recipe (pixel_array -> apply_voi_lut -> invert -> min/max -> uint8 ->
resize), one thread each, on the same files. Reports images per second per core for both, the
speed-up, and the mean absolute difference between the two outputs in grey levels.

``inference``: images per second of each prediction stage (decoding in one process and in workers,
each model with and without the flip TTA, weighted boxes fusion), the models' combined rate, and the
whole predictor end to end with the fusion in processes and inline (the baseline), on real-size
DICOMs, with trained weights or the config's models with random weights; and the estimated notebook
run time for 1,263 and 6,000 test images.

``serve``: a short bounded load check of the web application (``infer/app.py``) through a real
server on loopback: N uploads, K at a time; errors, median and 90th-percentile latency.

``training``: training images per second of the NIH backbone through the project's training loop
(``utils.training.loop.train_one_epoch``: forward, summed loss, scaled backward, SGD step, schedule) in full
precision (the baseline) and with mixed precision (fp16 + GradScaler on CUDA, bf16 autocast on the
CPU), alternating the two in each repeat. Images are random tensors already in memory, so the figure
is the model's compute, not the data loading.

``loop``: what bounds each kind's training loop (the torch kinds and YOLO of a config) on real prepared
images: the loop's training images/s beside its bare model's (one batch in memory) and its data
loader's alone, and the loop's wait for data (``utils/benchmarking/loop_benchmark.py``). Each ``--variant``
(e.g. ``--variant today study.workers=2 study.channels_last=false``) is measured beside the config's own
settings in the same run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from utils.benchmarking.benchmarks import (
    benchmark_grey_input,
    benchmark_inference,
    benchmark_reader,
    benchmark_serve,
    benchmark_training,
)
from utils.benchmarking.loop_benchmark import benchmark_loop, prepare_images
from utils.core.config import (
    MAX_IMAGE_SIZE,
    MAX_PENDING,
    ConfigError,
    batch_size_argument,
    device_argument,
    float_in,
    int_in,
    parse_overrides,
    worker_count,
)
from utils.core.files import write_text_atomic
from utils.nets.models import ARCHITECTURES


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    reader = sub.add_parser("reader", help="DICOM decode + resize vs the copied recipe")
    reader.add_argument("--files", type=int_in(1, 1000), default=6)
    reader.add_argument("--repeats", type=int_in(1, 1000), default=5)
    reader.add_argument("--size", type=int_in(16, MAX_IMAGE_SIZE), default=1024)
    reader.add_argument("--out", help="also write the JSON here")
    training = sub.add_parser("training", help="backbone training images/s, full vs mixed precision")
    training.add_argument("--arch", default="resnext50_32x4d", choices=sorted(ARCHITECTURES))
    training.add_argument("--image-size", type=int_in(16, MAX_IMAGE_SIZE), default=224)
    training.add_argument("--batch-size", type=batch_size_argument, default=32)
    training.add_argument("--steps", type=int_in(1, 10_000), default=20, help="training steps per repeat and precision")
    training.add_argument("--repeats", type=int_in(1, 1000), default=5)
    training.add_argument("--amp", choices=["fp16", "bf16"], default=None,
                          help="mixed precision to compare (default: fp16 on CUDA, bf16 on the CPU)")
    training.add_argument("--device", type=device_argument, default="auto")
    training.add_argument("--out", help="also write the JSON here")
    grey = sub.add_parser("grey-input", help="study training images/s: grey replicated to 3 channels vs 1-channel stem")
    grey.add_argument("--arch", default="timm:tf_efficientnet_lite0")
    grey.add_argument("--image-size", type=int_in(16, MAX_IMAGE_SIZE), default=160)
    grey.add_argument("--batch-size", type=batch_size_argument, default=16)
    grey.add_argument("--steps", type=int_in(1, 10_000), default=5, help="training steps per repeat and variant")
    grey.add_argument("--repeats", type=int_in(1, 1000), default=5)
    grey.add_argument("--out", help="also write the JSON here")
    inference = sub.add_parser("inference", help="prediction images/s per stage and end to end")
    source = inference.add_mutually_exclusive_group()
    source.add_argument("--weights-dir", type=Path, default=None, help="trained weights (manifest.json)")
    source.add_argument("--config", type=Path, default=Path("train/configs/full.yaml"),
                        help="without --weights-dir: models of this config with random weights")
    inference.add_argument("--folds", type=int_in(1, 100), default=1, help="with --config: folds per model (full: 5)")
    inference.add_argument("--images", type=int_in(1, 100_000), default=8)
    inference.add_argument("--repeats", type=int_in(1, 1000), default=3)
    inference.add_argument("--batch-size", type=batch_size_argument, default=None)
    inference.add_argument("--workers", type=worker_count, default=None, help="decoding processes")
    inference.add_argument("--fusion-workers", type=worker_count, default=None,
                           help="fusion processes (default: the config's; 0 on the CPU)")
    inference.add_argument("--device", type=device_argument, default=None)
    inference.add_argument("--compare-channels-last", action="store_true",
                           help="also time the torch models in the other memory layout")
    inference.add_argument("--scale", type=float_in(0.01, 1.0), default=1.0,
                           help="shrink the test DICOMs (quick checks)")
    inference.add_argument("--out", help="also write the JSON here")
    serve = sub.add_parser("serve", help="web application load check on loopback")
    serve.add_argument("--weights-dir", type=Path, required=True)
    serve.add_argument("--requests", type=int_in(1, 100_000), default=50)
    serve.add_argument("--concurrency", type=int_in(1, MAX_PENDING), default=4)
    serve.add_argument("--image", type=Path, default=None, help="radiograph to upload (default: a real-size DICOM)")
    serve.add_argument("--device", type=device_argument, default="cpu")
    serve.add_argument("--out", help="also write the JSON here")
    loop = sub.add_parser("loop", help="each kind's training loop beside its bare model and its data alone")
    images = loop.add_mutually_exclusive_group(required=True)
    images.add_argument("--prepared", type=Path, help="train/prepare.py's meta.csv (real images)")
    images.add_argument("--data-dir", type=Path, help="or a competition folder / resized copy, prepared first into "
                        "OUT's folder at the sizes the kinds read")
    loop.add_argument("--patients", type=Path, default=None, help="with --data-dir: image -> patient table")
    loop.add_argument("--config", type=Path, default=Path("train/configs/real256.yaml"))
    loop.add_argument("--kinds", nargs="+", default=None, help="kinds to measure (default: every one in the config)")
    loop.add_argument("--fold", type=int_in(0, 99), default=0, help="its training part supplies the images")
    loop.add_argument("--steps", type=int_in(2, 10_000), default=8, help="batches per repeat")
    loop.add_argument("--repeats", type=int_in(1, 1000), default=3)
    loop.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                      help="change the config for every variant")
    loop.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME SECTION.KEY=VALUE",
                      help="a name and the keys it changes, measured beside the config's settings")
    loop.add_argument("--out", help="also write the JSON here")
    return parser


def sectioned_overrides(items: list[str], what: str) -> dict[str, dict]:
    """``["study.workers=0", ...]`` -> ``{"study": {"workers": 0}}``."""
    sections: dict[str, list[str]] = {}
    for item in items:
        section, dot, rest = item.partition(".")
        if not dot or not section or "=" not in rest:
            raise SystemExit(f"error: {what} {item!r}: expected SECTION.KEY=VALUE")
        sections.setdefault(section, []).append(rest)
    return {section: parse_overrides(values) for section, values in sections.items()}


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.stage == "reader":
        result = benchmark_reader(args.files, args.repeats, args.size)
    elif args.stage == "grey-input":
        result = benchmark_grey_input(args.arch, args.image_size, args.batch_size, args.steps, args.repeats)
    elif args.stage == "serve":
        result = benchmark_serve(args.weights_dir, args.requests, args.concurrency, args.image, args.device)
    elif args.stage == "loop":
        variants = {}
        for name, *items in args.variant:
            if name == "config" or name in variants or "=" in name:
                raise SystemExit(f"error: --variant {name!r}: give each variant a new name before its keys")
            variants[name] = sectioned_overrides(items, f"--variant {name}")
        overrides = sectioned_overrides(args.overrides, "--set")
        try:
            prepared = args.prepared
            if prepared is None:
                folder = Path(args.out).parent if args.out else Path("runs/bench")
                prepared = prepare_images(args.config, args.data_dir, folder / "loop_prepared", args.kinds, overrides,
                                          args.patients)
            result = benchmark_loop(args.config, prepared, args.kinds, fold=args.fold, steps=args.steps,
                                    repeats=args.repeats, variants=variants, overrides=overrides)
        except (ConfigError, ValueError, OSError) as err:
            raise SystemExit(f"error: {err}") from None
    elif args.stage == "inference":
        result = benchmark_inference(args.weights_dir, args.config, args.images, args.repeats, args.batch_size,
                                     args.workers, args.device, args.scale, folds=args.folds,
                                     fusion_workers=args.fusion_workers,
                                     compare_channels_last=args.compare_channels_last)
    else:
        result = benchmark_training(args.arch, args.image_size, args.batch_size, args.steps, args.repeats, args.amp,
                                    args.device)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, text + "\n")
    return result


if __name__ == "__main__":
    main()
