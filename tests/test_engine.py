"""The training engine: schedule values, exact resume after a crash, non-finite stop, checkpoints,
precision, bad items, and a two-process DistributedDataParallel run on the CPU."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, TINY_BACKBONE
from torch import nn

from utils.core.runtime import resolve_precision
from utils.data.datasets import ImageDataset
from utils.data.nih import NIH_FINDINGS, assign_nih_splits, load_nih_entries
from utils.data.presets import build_transform
from utils.kinds.backbone.network import MultiLabelClassifier
from utils.training.checkpoints import CHECKPOINT_KEYS, CheckpointError, load_checkpoint, save_checkpoint
from utils.training.loop import NonFiniteLossError, TrainConfig, build_optimizer, fit, lr_factor


def test_schedule_values_of_the_report():
    total = 1000
    assert lr_factor(0, total) == pytest.approx(1.0)
    assert lr_factor(total // 2, total) == pytest.approx(0.525)
    assert lr_factor(total, total) == pytest.approx(0.05)
    assert lr_factor(10 * total, total) == pytest.approx(0.05)  # never below the floor
    factors = [lr_factor(t, total) for t in range(total + 1)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_warm_up_is_linear_then_the_cosine_starts_at_one():
    assert [lr_factor(t, 110, warmup_steps=10) for t in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, 110, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(60, 110, warmup_steps=10) == pytest.approx(0.525)
    assert lr_factor(110, 110, warmup_steps=10) == pytest.approx(0.05)


def test_precision_choices():
    cpu = torch.device("cpu")
    assert not resolve_precision("auto", cpu).enabled
    assert resolve_precision("bf16", cpu).dtype == torch.bfloat16 and not resolve_precision("bf16", cpu).scaler
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        resolve_precision("fp16", cpu)


class TensorItems(torch.utils.data.Dataset):
    def __init__(self, n: int, features: int = 4):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, features, generator=generator)
        self.y = (self.x.sum(dim=1, keepdim=True) > 0).float()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index], self.y[index], index


class LinearModel(nn.Module):
    def __init__(self, poison_after: int | None = None):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.calls, self.poison_after = 0, poison_after

    def forward(self, x, y=None):
        logits = self.linear(x)
        out = {"logits": logits}
        if y is not None:
            out["loss_bce"] = nn.functional.binary_cross_entropy_with_logits(logits, y)
            if self.training:
                self.calls += 1
                if self.poison_after is not None and self.calls > self.poison_after:
                    out["loss_bce"] = out["loss_bce"] * float("nan")
        return out


def _tiny_config(**changes) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 4, "lr": 0.1, "workers": 0, "amp": "off", "device": "cpu", "seed": 1}
    return TrainConfig(**{**base, **changes})


def test_fit_learns_and_writes_metrics_curve_and_checkpoints_with_fixed_keys(tmp_path):
    result = fit(LinearModel(), TensorItems(16), TensorItems(8), _tiny_config(), tmp_path, progress=False)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    assert metrics["train_loss"].iloc[1] < metrics["train_loss"].iloc[0]  # a separable problem: it learns
    assert {"train_loss", "train_loss_bce", "val_loss", "lr", "train_images_per_s"} <= set(metrics.columns)
    assert metrics["train_n_images"].tolist() == [16, 16]
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    state = load_checkpoint(result.last_checkpoint)
    assert set(state) == set(CHECKPOINT_KEYS) and state["epoch"] == 2
    assert state["config"]["lr"] == 0.1
    # The per-iteration schedule: 4 steps per epoch, lr after the last step is the floor.
    assert metrics["lr"].iloc[-1] == pytest.approx(0.1 * 0.05)
    assert metrics["lr"].iloc[0] == pytest.approx(0.1 * lr_factor(4, 8))


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"epoch 2 step 1.*loss_bce=nan"):
        fit(LinearModel(poison_after=4), TensorItems(16), TensorItems(8), _tiny_config(), tmp_path, progress=False)
    # The last good epoch is still on disk and readable.
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_checkpoint_keys_are_enforced(tmp_path):
    with pytest.raises(CheckpointError, match="keys"):
        save_checkpoint(tmp_path / "x.pt", {"model": {}})
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")
    assert not list(tmp_path.glob("*tmp*"))


def test_resume_with_another_config_is_refused(tmp_path):
    fit(LinearModel(), TensorItems(8), TensorItems(4), _tiny_config(epochs=1), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=r"changed: \['lr'\]"):
        fit(LinearModel(), TensorItems(8), TensorItems(4), _tiny_config(epochs=1, lr=0.5), tmp_path, resume=True,
            progress=False)


def test_a_checkpoint_written_before_a_new_config_key_resumes_under_its_default(tmp_path):
    fit(LinearModel(), TensorItems(8), TensorItems(4), _tiny_config(epochs=1), tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "last.pt")
    del state["config"]["trunk_lr_scale"]  # as every checkpoint before 2026-12-07
    save_checkpoint(tmp_path / "last.pt", state)
    result = fit(LinearModel(), TensorItems(8), TensorItems(4), _tiny_config(epochs=1), tmp_path, resume=True,
                 progress=False)
    assert len(result.history) == 1
    del state["config"]["ema_decay"]  # a key absent from the checkpoint, and another value than its default now
    save_checkpoint(tmp_path / "last.pt", state)
    with pytest.raises(CheckpointError, match=r"changed: \['ema_decay'\]"):
        fit(LinearModel(), TensorItems(8), TensorItems(4), _tiny_config(epochs=1, ema_decay=0.9), tmp_path,
            resume=True, progress=False)


def test_the_trunk_learns_at_its_fraction_of_the_rate():
    model = MultiLabelClassifier(3, "resnet18", None)
    plain = build_optimizer(model, _tiny_config())
    assert [g["lr"] for g in plain.param_groups] == [0.1, 0.1]  # the two groups of before the key
    gentle = build_optimizer(model, _tiny_config(trunk_lr_scale=0.25))
    names = {id(p): n for n, p in model.named_parameters()}
    for group in gentle.param_groups:
        in_trunk = {names[id(p)].startswith("trunk.") for p in group["params"]}
        assert len(in_trunk) == 1 and group["lr"] == pytest.approx(0.025 if in_trunk == {True} else 0.1)
    assert sum(len(g["params"]) for g in gentle.param_groups) == len(list(model.parameters()))
    assert {g["weight_decay"] for g in gentle.param_groups} == {0.0, _tiny_config().weight_decay}
    from utils.kinds.frcnn.network import FasterRCNNDetector

    detector = FasterRCNNDetector("resnet18", "none", image_size=64)
    rates = {round(g["lr"], 6) for g in build_optimizer(detector, _tiny_config(trunk_lr_scale=0.25)).param_groups
             if g["params"]}
    assert rates == {0.025, 0.1}
    with pytest.raises(ValueError, match="no trainable trunk"):
        build_optimizer(LinearModel(), _tiny_config(trunk_lr_scale=0.5))


def _nih_sets(nih_dataset, seed: int):
    entries = load_nih_entries(nih_dataset)
    split = assign_nih_splits(entries, nih_dataset, val_fraction=0.2, seed=seed)
    train, val = entries[split == "train"].head(16), entries[split == "val"]
    return (ImageDataset(train["path"], train["targets"], build_transform("nih_train", 40, 48), seed=seed),
            ImageDataset(val["path"], val["targets"], build_transform("nih_eval", 40, 48), seed=seed))


def _model(arch: str = "resnext50_32x4d"):
    torch.manual_seed(0)
    return MultiLabelClassifier(len(NIH_FINDINGS), arch, None)


@pytest.mark.parametrize("channels_last", [False, True])
def test_resume_after_a_crash_ends_with_the_same_weights(nih_dataset, tmp_path, channels_last):
    """A real ResNet with the real (random) augmentations: killed in the middle of epoch 2, resumed,
    it must end bit-identical to an uninterrupted run with the same seed (in either memory layout)."""
    config = _tiny_config(epochs=3, batch_size=8, lr=0.01, channels_last=channels_last)
    train, val = _nih_sets(nih_dataset, config.seed)
    straight = fit(_model("resnet18"), train, val, config, tmp_path / "straight", progress=False)

    crashing = _model("resnet18")
    calls = {"n": 0}
    original_forward = crashing.forward

    def forward_then_crash(images, targets=None):
        if crashing.training:
            calls["n"] += 1
            if calls["n"] == 3:  # epoch 2, step 1 (two steps per epoch)
                raise RuntimeError("simulated kill")
        return original_forward(images, targets)

    crashing.forward = forward_then_crash
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(crashing, train, val, config, tmp_path / "resumed", progress=False)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    resumed = fit(_model("resnet18"), train, val, config, tmp_path / "resumed", resume=True, progress=False)

    a, b = load_checkpoint(straight.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert a["epoch"] == b["epoch"] == 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    losses = [[row[k] for k in ("train_loss", "val_loss")] for row in a["metrics"]["history"]]
    assert losses == [[row[k] for k in ("train_loss", "val_loss")] for row in b["metrics"]["history"]]


def test_channels_last_training_computes_what_the_contiguous_layout_does(nih_dataset, tmp_path):
    """The layout is a speed setting: the same run in both layouts ends with the same weights (up to the
    order of float sums), and the channels-last run's weights and outputs really are channels-last."""
    train, val = _nih_sets(nih_dataset, 0)
    runs = {}
    for channels_last in (False, True):
        model = _model("resnet18")
        runs[channels_last] = fit(model, train, val, _tiny_config(epochs=1, batch_size=8, lr=0.01,
                                                                  channels_last=channels_last),
                                  tmp_path / str(channels_last), progress=False)
        first_conv = next(m.weight for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first_conv.is_contiguous(memory_format=torch.channels_last) == channels_last
    a, b = (load_checkpoint(runs[k].last_checkpoint)["model"] for k in (False, True))
    for name, tensor in a.items():
        torch.testing.assert_close(tensor, b[name], rtol=1e-3, atol=1e-4, msg=name)
    assert runs[False].history[0]["train_loss"] == pytest.approx(runs[True].history[0]["train_loss"], rel=1e-4)


def test_bf16_autocast_trains_on_the_cpu(nih_dataset, tmp_path):
    train, val = _nih_sets(nih_dataset, 0)
    result = fit(_model("resnet18"), train, val, _tiny_config(epochs=1, batch_size=8, lr=0.01, amp="bf16"), tmp_path,
                 progress=False)
    assert math.isfinite(result.history[0]["train_loss"])


def test_an_unreadable_image_is_skipped_and_training_goes_on(nih_dataset, tmp_path, caplog):
    entries = load_nih_entries(nih_dataset).head(12)
    paths = list(entries["path"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    paths[3] = broken
    data = ImageDataset(paths, entries["targets"], build_transform("nih_eval", 40, 48))
    with caplog.at_level("WARNING"):
        result = fit(_model(), data, data, _tiny_config(epochs=1, batch_size=4, lr=0.01), tmp_path / "run",
                     progress=False)
    assert result.history[0]["train_n_images"] == 11
    assert "broken.png" in caplog.text


@pytest.mark.slow
def test_two_process_distributed_training_on_the_cpu(nih_dataset, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "train/train_backbone.py", "--data-dir", str(nih_dataset), "--out", str(out), "--no-progress",
               "--config", "train/configs/demo.yaml", "--set", *TINY_BACKBONE, "epochs=1", "arch=resnet18"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "world size 2" in done.stderr
    metrics = pd.read_csv(out / "metrics.csv")
    n_train = int((assign_nih_splits(load_nih_entries(nih_dataset), nih_dataset, 0.1, seed=42) == "train").sum())
    # Each rank read half of the shuffled training set (DistributedSampler pads to an even count).
    assert n_train <= metrics["train_n_images"].iloc[0] <= n_train + 1
    assert np.isfinite(metrics["val_loss"].iloc[0])
    assert load_checkpoint(out / "best.pt")["epoch"] == 1
    assert (out / "eval_test.json").is_file()


def test_a_killed_runs_half_written_checkpoint_is_removed_by_the_next(tmp_path):
    """SIGKILL during a checkpoint write leaves ``last.tmp-PID.pt`` (no cleanup runs); the next run in
    that folder deletes it, and keeps a live writer's."""
    import os

    orphan = tmp_path / f"last.tmp-{2**22 + 4321}.pt"
    live = tmp_path / f"best.tmp-{os.getppid()}.pt"
    tmp_path.mkdir(exist_ok=True)
    orphan.write_bytes(b"half")
    live.write_bytes(b"being written")
    fit(LinearModel(), TensorItems(8), TensorItems(4), _tiny_config(epochs=1), tmp_path, progress=False)
    assert not orphan.exists() and live.exists()
