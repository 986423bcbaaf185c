"""Atomic writes: the file appears whole or not at all, and no temporary file is left behind; writers of one
shared file (a weights folder's manifest) take turns, and a killed writer leaves neither a lock nor a
temporary copy that outlives the next write."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.core.files import OverwriteError, atomic_path, check_not_an_input, file_lock
from utils.ensemble.manifest import MANIFEST_FILE, read_manifest, register_model


def test_the_file_is_replaced_only_when_the_write_finishes(tmp_path):
    path = tmp_path / "sub" / "result.csv"
    with atomic_path(path) as temporary:
        assert temporary.parent == path.parent and temporary.suffix == ".csv" and temporary != path
        temporary.write_text("first")
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError, match="killed"), atomic_path(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "first"
    assert [p.name for p in path.parent.iterdir()] == ["result.csv"]


def test_an_output_that_is_an_input_is_refused_through_links_and_folders(tmp_path):
    inputs = tmp_path / "weights"
    (inputs / "study").mkdir(parents=True)
    weights = inputs / "study" / "fold0.pt"
    weights.write_bytes(b"w")
    (tmp_path / "link.csv").symlink_to(weights)
    (tmp_path / "hard.csv").hardlink_to(weights)
    for out in (weights, tmp_path / "link.csv", tmp_path / "hard.csv"):
        with pytest.raises(OverwriteError, match=rf"--out .*{out.name} is an input of this run \(.*fold0.pt\)"):
            check_not_an_input(out, [None, inputs])
    # A new path, or an existing file that is no input (an earlier submission), may be written.
    check_not_an_input(tmp_path / "new.csv", [inputs])
    (tmp_path / "old.csv").write_text("id,PredictionString\n")
    check_not_an_input(tmp_path / "old.csv", [inputs, tmp_path / "missing.csv"])


def _register_many(weights_dir, prefix: str, count: int) -> None:
    for k in range(count):
        register_model(weights_dir, f"{prefix}{k}", {0: "w.pt"}, 64, {"k": k})


def test_two_processes_registering_into_one_weights_folder_lose_no_entry(tmp_path):
    """Two training stages registering into one weights folder at once (``--kinds`` split over two
    terminals): every entry lands. Without the lock about half of them were lost, each writer exit 0."""
    (tmp_path / "w.pt").write_bytes(b"weights")
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_register_many, args=(tmp_path, prefix, 40)) for prefix in ("a", "b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    models = read_manifest(tmp_path)["models"]
    assert sorted(models) == sorted(f"{p}{k}" for p in "ab" for k in range(40))
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_FILE, MANIFEST_FILE + ".lock", "w.pt"]


def _hold_lock_until_killed(path, locked) -> None:
    with file_lock(path):
        locked.set()
        signal.pause()


def test_a_killed_writer_leaves_no_lock_and_its_half_written_manifest_goes(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"weights")
    register_model(tmp_path, "study", {0: "w.pt"}, 64, {})
    context = multiprocessing.get_context("fork")
    locked = context.Event()
    holder = context.Process(target=_hold_lock_until_killed, args=(tmp_path / MANIFEST_FILE, locked))
    holder.start()
    assert locked.wait(60)
    with open(tmp_path / (MANIFEST_FILE + ".lock")) as handle:  # held: another writer would wait
        with pytest.raises(BlockingIOError):
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(timeout=60)
    # A writer killed mid-write leaves its temporary copy; a live writer's (the parent's pid) is kept.
    dead_pid = holder.pid
    orphan = tmp_path / f"manifest.tmp-{dead_pid}.json"
    orphan.write_text('{"models": {')
    live = tmp_path / f"manifest.tmp-{os.getppid()}.json"
    live.write_text("{}")
    register_model(tmp_path, "yolo", {0: "w.pt"}, 64, {})  # does not wait for the dead holder
    assert sorted(read_manifest(tmp_path)["models"]) == ["study", "yolo"]
    assert not orphan.exists() and live.exists()
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["models"]["yolo"]["input_size"] == 64


class _Killed(BaseException):
    """A kill at a chosen instant: not an Exception, so nothing on the way catches it."""


@given(kill_at=st.integers(0, 12), folds=st.integers(1, 3))
@settings(max_examples=40, deadline=None)
def test_a_registration_killed_at_any_rename_leaves_the_old_entry_the_new_one_or_a_refusal(tmp_path_factory, kill_at,
                                                                                           folds):
    """A weights folder with model "study" registered (old files, input size 64) is registered again
    (new files, input size 96), killed at the ``kill_at``-th rename of an atomic write. Whatever the
    instant, the manifest parses and "study" is the old entry with the old files, the new entry with the
    new files, or an entry the predictor refuses; never new files under the old entry."""
    from unittest import mock

    import torch

    from utils.ensemble.manifest import ManifestError, entry_files
    from utils.kinds.base import register_fold_checkpoints
    from utils.training.checkpoints import save_checkpoint

    folder = tmp_path_factory.mktemp("registration")
    weights = folder / "weights"

    def checkpoints(value: float) -> dict:
        paths = {}
        for fold in range(folds):
            state = {"model": {"w": torch.full((2,), value)}, "ema": None, "optimizer": {}, "scheduler": {},
                     "scaler": {}, "epoch": 1, "config": {}, "metrics": {}}
            paths[fold] = save_checkpoint(folder / f"{value}-{fold}.pt", state)
        return paths

    register_fold_checkpoints(weights, "study", checkpoints(1.0), 64, {"arch": "old"})
    new = checkpoints(2.0)
    real_replace, calls = os.replace, []

    def replace_or_die(source, destination):
        calls.append(destination)
        if len(calls) > kill_at:
            raise _Killed
        return real_replace(source, destination)

    with mock.patch("utils.core.files.os.replace", replace_or_die):
        try:
            register_fold_checkpoints(weights, "study", new, 96, {"arch": "new"})
            finished = True
        except _Killed:
            finished = False
    spec = read_manifest(weights)["models"]["study"]
    try:
        _, files, size = entry_files(weights, "study", spec)
    except ManifestError as err:
        assert not finished and "run that stage again with --resume" in str(err)
        return
    values = {float(torch.load(path, weights_only=True)["w"][0]) for path in files}
    assert (size, spec["config"]["arch"], values) in ((64, "old", {1.0}), (96, "new", {2.0}))
    assert finished or size == 64
