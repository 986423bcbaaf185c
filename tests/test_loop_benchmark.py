"""The training-loop benchmark (infer/benchmark.py loop): every kind's loop, bare model and data measured
on prepared images at toy sizes, variants beside the config, and the timing arithmetic on a fake clock.
It must run and its figures must hang together; the figures themselves come from docs/benchmarks.md."""

import json

import pytest
from conftest import REPO

from infer.benchmark import main as benchmark_main
from utils.training import speed

TOY = ["study.arch=resnet18", "study.backbone=none", "study.image_size=48", "study.batch_size=4",
       "study.workers=0", "study.device=cpu",
       "frcnn.arch=resnet18", "frcnn.backbone=none", "frcnn.image_size=64", "frcnn.predict_size=64",
       "frcnn.batch_size=2", "frcnn.workers=0", "frcnn.proposals=50", "frcnn.roi_samples=32", "frcnn.device=cpu",
       "yolo.image_size=64", "yolo.predict_size=64", "yolo.batch_size=4", "yolo.workers=0", "yolo.device=cpu",
       "yolo.amp=false"]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_timed_batches_split_a_loop_into_waits_and_steps(monkeypatch):
    """Each batch takes 1 s to arrive and the loop holds it 3 s: the wait is a quarter of the loop's time
    once the first batch is in, and the loader alone delivers one batch a second."""
    clock = FakeClock()
    monkeypatch.setattr(speed.time, "perf_counter", clock)

    def loader():
        for _ in range(4):
            clock.now += 1.0
            yield ([0, 0],)  # a batch of two images

    timed = speed.TimedBatches(type("Loader", (), {"__iter__": lambda self: loader(), "__len__": lambda self: 4})())
    for _ in timed:
        clock.now += 3.0
    assert timed.steady_rate() == pytest.approx(8 / 15)  # 4 steps of 3 s and 3 waits of 1 s
    assert timed.wait_share() == pytest.approx(3 / 15)
    assert timed.delivery_rate() == pytest.approx(6 / 12)  # batches 2-4 (6 images) over the 12 s after the first


def test_loop_figures_are_medians_and_their_ratio():
    figures = speed.loop_figures({"loop": [10, 30, 20], "model": [40, 40, 50], "data": [500, 400, 600],
                                  "wait": [0.1, 0.3, 0.2]}, {"workers": 0})
    assert figures["loop_images_per_s"] == 20 and figures["model_images_per_s"] == 40
    assert figures["loop_share_of_model"] == 0.5 and figures["data_wait_share"] == 0.2 and figures["workers"] == 0


@pytest.mark.slow
def test_every_kind_is_measured_with_its_variants(detection_prepared, tmp_path):
    out = tmp_path / "loop.json"
    result = benchmark_main(["loop", "--prepared", str(detection_prepared), "--config",
                             str(REPO / "train" / "configs" / "demo.yaml"), "--steps", "2", "--repeats", "1",
                             "--set", *TOY, "--variant", "contiguous", "study.channels_last=false",
                             "frcnn.channels_last=false", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert set(result["kinds"]) == {"study", "frcnn", "yolo"}
    assert set(result["kinds"]["study"]) == set(result["kinds"]["frcnn"]) == {"config", "contiguous"}
    assert set(result["kinds"]["yolo"]) == {"config"}  # the variant changes nothing of YOLO's section
    assert result["kinds"]["study"]["config"]["channels_last"] is True  # demo.yaml's
    assert result["kinds"]["study"]["contiguous"]["channels_last"] is False
    for figures in (f for kind in result["kinds"].values() for f in kind.values()):
        assert figures["loop_images_per_s"] > 0 and figures["model_images_per_s"] > 0
        assert figures["data_images_per_s"] > 0 and 0 <= figures["data_wait_share"] < 1
        assert figures["loop_share_of_model"] == pytest.approx(
            figures["loop_images_per_s"] / figures["model_images_per_s"], rel=0.02)
    assert result["kinds"]["study"]["config"]["loop_speedup_over_config"] == 1.0
    assert "threads" in result["device"]


def test_a_variant_needs_a_name_and_section_keys(detection_prepared):
    with pytest.raises(SystemExit, match="give each variant a new name"):
        benchmark_main(["loop", "--prepared", str(detection_prepared), "--variant", "study.workers=0"])
    with pytest.raises(SystemExit, match="SECTION.KEY=VALUE"):
        benchmark_main(["loop", "--prepared", str(detection_prepared), "--variant", "fast", "workers=0"])
    with pytest.raises(SystemExit, match="unknown kind"):
        benchmark_main(["loop", "--prepared", str(detection_prepared), "--kinds", "nope"])
