"""The Kaggle notebook: built from the current sources (CI fails on a stale committed copy), executed
headless on a synthetic competition folder with weights from a tiny training, and equal to what
make_submission.py writes; its input discovery and offline install."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import REPO, same_submission

from infer import make_submission
from utils.core import kaggle_runtime


def test_the_committed_notebook_is_what_the_sources_build():
    result = subprocess.run([sys.executable, str(REPO / "kaggle" / "build_notebook.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_notebook_runs_headless_and_writes_what_make_submission_writes(trained_run, siim_dataset, tmp_path,
                                                                           monkeypatch):
    import nbclient
    import nbformat

    weights = trained_run / "weights"
    expected = tmp_path / "expected.csv"
    assert make_submission.main(["--data-dir", str(siim_dataset), "--weights-dir", str(weights),
                                 "--out", str(expected), "--no-progress"]) == 0

    notebook = nbformat.read(REPO / "kaggle" / "inference.ipynb", as_version=4)
    nbformat.validate(notebook)
    for name, value in {"SIIM_DATA_DIR": siim_dataset, "SIIM_WEIGHTS_DIR": weights, "SIIM_WHEELS_DIR": "",
                        "SIIM_OUTPUT_DIR": tmp_path / "working", "SIIM_CODE_DIR": tmp_path / "code"}.items():
        monkeypatch.setenv(name, str(value))
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "installed: nothing" in outputs  # everything importable: the wheels folder is not needed
    # The notebook says what it ran on (make kaggle-check compares that with the image it claims).
    import platform

    import torchvision

    from utils.core.kaggle_runtime import parse_runtime_line

    assert parse_runtime_line(outputs) == {"python": platform.python_version(), "torch": torch.__version__,
                                           "torchvision": torchvision.__version__}
    assert (tmp_path / "code" / "utils" / "prediction" / "predictor.py").read_text() == (
        REPO / "utils" / "prediction" / "predictor.py").read_text()
    same_submission(pd.read_csv(tmp_path / "working" / "submission.csv", keep_default_na=False),
                     pd.read_csv(expected, keep_default_na=False))


def test_fusion_processes_start_from_a_notebook_kernel(tmp_path):
    """Kaggle runs make_submission inside its Jupyter kernel, and beside a GPU the predictor spawns its
    fusion processes from there (the headless run above is on the CPU, where it spawns none)."""
    import nbclient
    import nbformat

    code = (f"import sys\nsys.path.insert(0, {str(REPO)!r})\nimport numpy as np\n"
            "from utils.ensemble.fusion import EnsembleConfig, MemberOutputs, combine_images, fusion_pool\n"
            "found = MemberOutputs({'detector': [(np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([0.9]))]})\n"
            "with fusion_pool(1) as pool:\n"
            "    fused = pool.submit(combine_images, [found], EnsembleConfig()).result()\n"
            "print('fused boxes:', len(fused[0].scores))")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert "fused boxes: 1" in "".join(o.get("text", "") for o in notebook.cells[0].outputs)


def _kaggle_input(root):
    (root / "siim-covid19-detection" / "test").mkdir(parents=True)
    (root / "siim-covid19-detection" / "sample_submission.csv").write_text("id,PredictionString\n")
    (root / "my-weights" / "weights").mkdir(parents=True)
    (root / "my-weights" / "weights" / "manifest.json").write_text("{}")
    (root / "my-wheels").mkdir()
    (root / "my-wheels" / "pkg-1.0-py3-none-any.whl").write_bytes(b"")
    return root


TRAINING_MODULES = ("utils.data.datasets", "utils.data.prepare", "utils.data.decoding_cache",
                    "utils.data.training_table", "utils.data.presets", "utils.data.predictions", "utils.data.nih",
                    "utils.scoring.detection", "utils.scoring.classification", "utils.scoring.metric",
                    "utils.core.report")


def test_the_notebook_carries_no_training_module():
    """make_submission's import closure (what the notebook carries) holds the predictor, the members and
    what they need, nothing of training (33 files and 6,806 lines before the split, 2026-12-01)."""
    sys.path.insert(0, str(REPO / "kaggle"))
    from build_notebook import code_closure

    modules = code_closure()
    assert "utils.kinds.yolo.member" in modules and "utils.prediction.predictor" in modules
    carried = [m for m in modules if m in TRAINING_MODULES or m.startswith(("train", "utils.training"))
               or m.endswith(".training")
               or m in ("utils.kinds.base", "utils.kinds.registry")]
    assert carried == []
    # each kind's package gives the notebook its config, network and member (with the study's views and
    # YOLO's trunk layer), nothing else: not YOLO's trainer
    assert {m for m in modules if m.startswith("utils.kinds.")} == {
        f"utils.kinds.{kind}.{part}" for kind in ("frcnn", "yolo", "study") for part in ("config", "network", "member")
    } | {"utils.kinds.study.tta", "utils.kinds.yolo.trunk", "utils.kinds.member", "utils.kinds.members"}


def test_the_kaggle_check_fails_when_its_environment_is_not_the_one_it_claims():
    sys.path.insert(0, str(REPO / "kaggle"))
    from kaggle_check import KAGGLE_PYTHON, KAGGLE_TORCH, version_problems

    torch_version, vision_version = (pin.split("==")[1] for pin in KAGGLE_TORCH)
    kaggle = {"python": f"{KAGGLE_PYTHON}.11", "torch": f"{torch_version}+cu128", "torchvision": vision_version}
    line = f"runtime: python {kaggle['python']} torch {kaggle['torch']} torchvision {vision_version}"
    assert version_problems(kaggle, f"other output\n{line}\n") == []
    assert version_problems({**kaggle, "torch": "2.14.1"}, line) == ["the built environment: torch 2.14.1, expected "
                                                                      f"{torch_version}"]
    assert version_problems(kaggle, line.replace(KAGGLE_PYTHON, "3.11")) == [
        f"the notebook's runtime line: python 3.11.11, expected {KAGGLE_PYTHON}"]
    assert len(version_problems(kaggle, "no runtime line")) == 3


def test_inputs_are_found_by_what_they_hold(tmp_path, monkeypatch):
    for name in ("SIIM_DATA_DIR", "SIIM_WEIGHTS_DIR", "SIIM_WHEELS_DIR", "SIIM_OUTPUT_DIR"):
        monkeypatch.delenv(name, raising=False)
    root = _kaggle_input(tmp_path / "input")
    paths = kaggle_runtime.find_paths(root)
    assert paths.data_dir == root / "siim-covid19-detection"
    assert paths.weights_dir == root / "my-weights" / "weights"
    assert paths.wheels_dir == root / "my-wheels"
    assert paths.output_dir == kaggle_runtime.KAGGLE_WORKING

    monkeypatch.setenv("SIIM_WEIGHTS_DIR", str(root / "my-wheels"))
    with pytest.raises(FileNotFoundError, match="SIIM_WEIGHTS_DIR=.*not a weights folder"):
        kaggle_runtime.find_paths(root)
    monkeypatch.delenv("SIIM_WEIGHTS_DIR")
    with pytest.raises(FileNotFoundError, match="no competition folder .* set SIIM_DATA_DIR"):
        kaggle_runtime.find_paths(tmp_path / "empty")


def test_nothing_is_installed_when_everything_imports_and_a_missing_package_needs_the_wheels(tmp_path):
    assert kaggle_runtime.install_missing(None, {"json": "json"}) == []
    assert kaggle_runtime.install_missing(tmp_path, {"json": "json"}) == []  # a wheels folder, already satisfied
    with pytest.raises(ModuleNotFoundError, match="no wheels folder"):
        kaggle_runtime.install_missing(None, {"surely_not_installed_xyz": "surely-not-installed-xyz"})
    with pytest.raises(subprocess.CalledProcessError):  # pip, offline, finds no such wheel in the folder
        kaggle_runtime.install_missing(tmp_path, {"surely_not_installed_xyz": "surely-not-installed-xyz"})


def _run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "kaggle" / script), *args], capture_output=True, text=True,
                          env=env, cwd=REPO)


@pytest.mark.slow
def test_upload_folders_are_flat_valid_and_the_weights_still_predict(trained_run, siim_dataset, tmp_path):
    import json

    from utils.prediction.predictor import Ensemble

    out = tmp_path / "kaggle"
    result = _run("make_datasets.py", "--weights-dir", str(trained_run / "weights"), "--out", str(out),
                  "--owner", "someone", "--no-wheels")
    assert result.returncode == 0, result.stderr
    weights = out / "weights"
    assert all(p.is_file() for p in weights.iterdir())  # flat: Kaggle keeps no subfolders
    assert json.loads((weights / "dataset-metadata.json").read_text())["id"] == "someone/siim-covid19-pipeline-weights"
    assert json.loads((out / "wheels" / "dataset-metadata.json").read_text())["licenses"] == [{"name": "other"}]
    kernel = json.loads((out / "kernel" / "kernel-metadata.json").read_text())
    assert kernel["enable_gpu"] is True and kernel["enable_internet"] is False
    assert kernel["code_file"] == "inference.ipynb" and kernel["competition_sources"] == ["siim-covid19-detection"]
    assert kernel["dataset_sources"] == ["someone/siim-covid19-pipeline-weights",
                                         "someone/siim-covid19-pipeline-wheels"]
    assert (out / "kernel" / "inference.ipynb").read_text() == (REPO / "kaggle" / "inference.ipynb").read_text()
    # the flattened folder is a weights folder: every model loads (the calibration may leave one out)
    ensemble = Ensemble(weights, overrides={"workers": 0, "model_weights": {}})
    assert {m.name for m in ensemble.members} == {"study", "frcnn", "yolo"}


def _make_datasets():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_datasets", REPO / "kaggle" / "make_datasets.py")
    make_datasets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_datasets)
    return make_datasets


def test_wheels_are_binary_for_kaggle_pinned_and_without_dependencies(tmp_path):
    make_datasets = _make_datasets()
    assert make_datasets.DEFAULT_PYTHON_VERSIONS == ("3.12",)  # Kaggle's image since 2026
    command = make_datasets.wheel_download_command(tmp_path, "3.11", "2.35")
    assert {"--only-binary=:all:", "--no-deps"} <= set(command)
    assert "ensemble-boxes==1.0.9" in command and "ultralytics==8.4.190" in command and "pydicom==3.0.2" in command
    assert "numba==0.68.1" in command and "llvmlite==0.50.0" in command  # what ensemble-boxes imports
    assert command[command.index("--python-version") + 1] == "3.11"
    platforms = {command[k + 1] for k, a in enumerate(command) if a == "--platform"}
    assert {"manylinux_2_28_x86_64", "manylinux_2_34_x86_64", "manylinux2014_x86_64", "any"} <= platforms


def _tiny_wheel(folder, name: str, tag: str) -> None:
    """A minimal valid wheel (metadata only): enough for pip to resolve it."""
    import zipfile

    info = f"{name}-1.0.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: {tag}\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-1.0-{tag}.whl", "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)


def test_the_wheel_check_names_a_package_without_a_wheel_for_one_python(tmp_path):
    """A compiled package built for 3.11 only (python-gdcm's cp311 wheel on Kaggle's 3.12): the check
    fails here for 3.12, naming it, and passes for 3.11."""
    make_datasets = _make_datasets()
    _tiny_wheel(tmp_path, "purepkg", "py3-none-any")
    _tiny_wheel(tmp_path, "compiledpkg", "cp311-cp311-manylinux_2_28_x86_64")
    requirements = ["purepkg==1.0", "compiledpkg==1.0"]
    problems = make_datasets.check_wheels(tmp_path, ["3.11", "3.12"], "2.35", requirements)
    assert list(problems) == ["3.12"] and "compiledpkg==1.0: no wheel for CPython 3.12" in problems["3.12"]
    assert "purepkg" not in problems["3.12"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no wheel files there" in make_datasets.check_wheels(empty, ["3.12"], "2.35")["3.12"]


def test_push_says_what_is_missing_without_credentials(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = _run("push.py", str(tmp_path), env=env)
    assert result.returncode == 2
    assert "kaggle command-line tool is not installed" in result.stderr or "no Kaggle credentials" in result.stderr


def test_a_gpu_without_kernels_in_this_torch_falls_back_to_the_cpu_with_a_message():
    """Kaggle's P100 (sm_60) with a torch built from sm_70 on: the notebook predicts on the CPU and says why."""
    from types import SimpleNamespace

    from utils.core.kaggle_runtime import usable_device

    def fake_torch(capability, name, archs=("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"), gpus=1):
        cuda = SimpleNamespace(is_available=lambda: capability is not None, device_count=lambda: gpus,
                               get_device_capability=lambda index: capability, get_device_name=lambda index: name,
                               get_arch_list=lambda: list(archs))
        return SimpleNamespace(cuda=cuda, __version__="2.10.0")

    device, message = usable_device(fake_torch((6, 0), "Tesla P100-PCIE-16GB"))
    assert device == "cpu" and "no kernels for the Tesla P100" in message and "T4 x2" in message
    assert usable_device(fake_torch((7, 5), "Tesla T4"))[0] == "cuda"
    assert usable_device(fake_torch((7, 5), "Tesla T4", gpus=2))[0] == "cuda:0,cuda:1"  # T4 x2: both
    assert usable_device(fake_torch((8, 9), "NVIDIA L4"))[0] == "cuda"  # runs sm_86 code
    assert usable_device(fake_torch(None, ""))[0] == "cpu"
    source = (REPO / "kaggle" / "inference.ipynb").read_text()
    assert "usable_device()" in source and "'--devices', DEVICES" in source


def test_a_failed_weights_export_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """A full disk (or a kill) while the weights dataset is copied: the previous export stays as it was
    (before, it was deleted first, so a full disk left neither), no temporary folder stays, one line."""
    import errno
    import json
    import shutil

    make_datasets = _make_datasets()
    weights = tmp_path / "weights"
    (weights / "study").mkdir(parents=True)
    for fold in (0, 1):
        (weights / "study" / f"fold{fold}.pt").write_bytes(b"w" * 100)
    (weights / "manifest.json").write_text(json.dumps(
        {"models": {"study": {"files": {"0": "study/fold0.pt", "1": "study/fold1.pt"}}}}))
    out = tmp_path / "kaggle"
    make_datasets.weights_dataset(weights, out / "weights", "someone")
    before = {p.name: p.read_bytes() for p in (out / "weights").iterdir()}
    real_copy = shutil.copyfile

    def full_at_the_second_file(source, destination):
        if str(source).endswith("fold1.pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(destination))
        return real_copy(source, destination)

    monkeypatch.setattr(make_datasets.shutil, "copyfile", full_at_the_second_file)
    monkeypatch.setattr(make_datasets, "kaggle_owner", lambda owner: "someone")
    with pytest.raises(SystemExit, match=r"^error: .*study__fold1\.pt: No space left on device; \d+ MiB free there; "
                                         r"the previous .*weights \(if any\) is left as it was$"):
        make_datasets.main(["--weights-dir", str(weights), "--out", str(out), "--no-wheels"])
    assert {p.name: p.read_bytes() for p in (out / "weights").iterdir()} == before
    assert sorted(p.name for p in out.iterdir()) == ["weights"]
    monkeypatch.setattr(make_datasets.shutil, "copyfile", real_copy)
    (weights / "study" / "fold1.pt").write_bytes(b"new")
    make_datasets.weights_dataset(weights, out / "weights", "someone")
    assert (out / "weights" / "study__fold1.pt").read_bytes() == b"new"
    assert sorted(p.name for p in out.iterdir()) == ["weights"]
