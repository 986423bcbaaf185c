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
