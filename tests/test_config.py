"""Strict configs: unknown keys, wrong types and overrides fail loudly; every shipped key is commented."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from utils.config import ConfigError, load_section, parse_overrides, save_config
from utils.kinds.study import StudyConfig
from utils.nih import BackboneConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "train" / "configs").glob("*.yaml"))
SECTIONS = {"backbone": BackboneConfig, "study": StudyConfig}


def test_shipped_configs_exist():
    assert {p.name for p in CONFIGS} >= {"full.yaml", "demo.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_section_loads_and_every_key_is_commented(path):
    document = yaml.safe_load(path.read_text())
    assert set(SECTIONS) <= set(document)
    for section, schema in SECTIONS.items():
        config = load_section(path, section, schema)
        assert isinstance(config, schema)
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"{path.name}:{number}: key without a comment: {line!r}"


def test_full_config_has_the_reports_backbone_hyperparameters():
    config = load_section(CONFIGS[[p.name for p in CONFIGS].index("full.yaml")], "backbone", BackboneConfig)
    assert (config.arch, config.batch_size, config.epochs, config.image_size, config.resize) == \
        ("resnext50_32x4d", 32, 35, 224, 256)
    assert config.nesterov and config.lr_floor == 0.05


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_an_error_naming_file_and_key(tmp_path):
    path = _write(tmp_path, "backbone:\n  epochs: 2\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml \[backbone\].*lerning_rate"):
        load_section(path, "backbone", BackboneConfig)


def test_wrong_type_is_an_error(tmp_path):
    path = _write(tmp_path, "backbone:\n  epochs: two\n")
    with pytest.raises(ConfigError, match="epochs: expected int"):
        load_section(path, "backbone", BackboneConfig)
    with pytest.raises(ConfigError, match="amp"):
        load_section(_write(tmp_path, "backbone:\n  amp: half\n"), "backbone", BackboneConfig)


def test_missing_section_and_file(tmp_path):
    with pytest.raises(ConfigError, match="no section 'study'"):
        load_section(_write(tmp_path, "backbone: {}\n"), "study", StudyConfig)
    with pytest.raises(ConfigError, match="not found"):
        load_section(tmp_path / "absent.yaml", "study", StudyConfig)


def test_overrides_are_typed_and_checked(tmp_path):
    path = _write(tmp_path, "study:\n  epochs: 2\n")
    config = load_section(path, "study", StudyConfig, parse_overrides(["lr=1", "folds=[0, 2]", "grad_clip=null"]))
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.folds == [0, 2] and config.grad_clip is None
    with pytest.raises(ConfigError, match="unknown key"):
        load_section(path, "study", StudyConfig, parse_overrides(["epoch=3"]))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["epochs"])


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_nan_and_inf_floats_are_refused_in_every_section_and_route(tmp_path, text):
    from utils.fusion import ENSEMBLE_SECTION, EnsembleConfig, ensemble_config

    for body, key in ((f"study:\n  lr: {text}\n", "lr"), (f"study:\n  grad_clip: {text}\n", "grad_clip"),
                      (f"study:\n  class_weights: [1, 1, {text}, 1]\n", r"class_weights\[2\]")):
        with pytest.raises(ConfigError, match=rf"c\.yaml \[study\]: {key}: expected a finite number"):
            load_section(_write(tmp_path, body), "study", StudyConfig)
    with pytest.raises(ConfigError, match=r"with --set: none_weight: expected a finite number"):
        load_section(_write(tmp_path, "study: {}\n"), "study", StudyConfig, parse_overrides([f"none_weight={text}"]))
    # The ensemble section: from a config file, and from a manifest (where the old checks, v < 0, let NaN by).
    path = _write(tmp_path, f"{ENSEMBLE_SECTION}:\n  model_weights: {{faster_rcnn: {text}}}\n")
    with pytest.raises(ConfigError, match=r"model_weights\[faster_rcnn\]: expected a finite number"):
        load_section(path, ENSEMBLE_SECTION, EnsembleConfig)
    for key in ("none_classifier_weight", "box_none_power", "wbf_iou_thr"):
        with pytest.raises(ConfigError, match=rf"manifest\.json \[{ENSEMBLE_SECTION}\]: {key}: expected a finite"):
            ensemble_config({ENSEMBLE_SECTION: {key: float(text.replace(".", ""))}}, source="manifest.json")
    assert ensemble_config({ENSEMBLE_SECTION: {"none_classifier_weight": 0.5}}).none_classifier_weight == 0.5


def test_saved_config_loads_back_identical(tmp_path):
    config = StudyConfig(epochs=3, folds=[1], amp="bf16")
    path = save_config(config, tmp_path / "run" / "config.yaml", "study")
    assert load_section(path, "study", StudyConfig) == config


def test_off_and_yes_stay_strings_true_and_false_are_booleans(tmp_path):
    path = _write(tmp_path, "backbone:\n  amp: off\n  nesterov: false\n  arch: yes\n")
    assert parse_overrides(["amp=off", "nesterov=true"]) == {"amp": "off", "nesterov": True}
    config = load_section(path, "backbone", BackboneConfig)
    assert (config.amp, config.nesterov, config.arch) == ("off", False, "yes")


@pytest.mark.parametrize("argv, message", [
    (["--size", "0"], "--size must be at least 16"),
    (["--folds", "1"], "--folds must be at least 2"),
    (["--workers", "0"], "--workers must be at least 1"),
])
def test_prepare_refuses_option_values_out_of_range(tmp_path, capsys, argv, message):
    from train import prepare

    with pytest.raises(SystemExit):
        prepare.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "out"), *argv])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, message", [
    ("epochs=-1", "epochs must be at least 1"),
    ("lr=0", "lr must be > 0"),
    ("image_size=abc", "image_size: expected int"),
    ("ema_decay=1.5", "ema_decay must be in"),
    ("label_smoothing=1", "label_smoothing < 1"),
])
def test_training_options_out_of_range_stop_before_anything_runs(tmp_path, override, message):
    from train import train_study

    with pytest.raises(SystemExit, match=message):
        train_study.main(["--prepared", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "run"),
                          "--config", "train/configs/demo.yaml", "--set", override])
    assert not (tmp_path / "run").exists()
