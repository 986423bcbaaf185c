"""Strict configs: unknown keys, wrong types and overrides fail loudly; every setting is documented once,
where it is declared; the recipes say only what differs from the defaults; a run's resolved config loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from utils.core.config import ConfigError, load_section, parse_overrides, save_config
from utils.kinds.backbone.config import BackboneConfig
from utils.kinds.study.training import StudyConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "train" / "configs").glob("*.yaml"))


def keys_at_default(path: Path) -> list[str]:
    """``section.key`` of every key recipe ``path`` sets to its default (a recipe says only what differs)."""
    from utils.core.config import field_default, load_yaml_section
    from utils.pipeline.settings import SCHEMAS

    found = []
    for section in yaml.safe_load(Path(path).read_text()) or {}:
        found += [f"{section}.{key}" for key, value in load_yaml_section(path, section).items()
                  if value == field_default(SCHEMAS[section], key)]
    return found


def test_shipped_configs_exist():
    assert {p.name for p in CONFIGS} >= {"full.yaml", "demo.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_loads_and_says_only_what_differs_from_the_defaults(path):
    from utils.pipeline.settings import SCHEMAS

    document = yaml.safe_load(path.read_text())
    assert set(document) <= set(SCHEMAS)
    for section, schema in SCHEMAS.items():
        assert isinstance(load_section(path, section, schema), schema)
    assert keys_at_default(path) == []


def test_every_setting_is_documented_where_it_is_declared_and_the_reference_is_up_to_date():
    """Each field of each section's dataclass has its line of documentation below it; docs/reference.md's
    "Settings" is what ``python train/settings.py --write-reference`` writes today."""
    from utils.core.config import setting_rows
    from utils.pipeline.settings import REFERENCE, REFERENCE_END, REFERENCE_START, SCHEMAS, reference_markdown

    undocumented = [f"{section}.{row['key']}" for section, schema in SCHEMAS.items() for row in setting_rows(schema)
                    if len(row["doc"]) < 8]
    assert undocumented == []
    text = REFERENCE.read_text()
    documented = text[text.index(REFERENCE_START) + len(REFERENCE_START):text.index(REFERENCE_END)]
    assert documented.strip("\n") == reference_markdown().strip("\n"), \
        "docs/reference.md's settings are out of date: python train/settings.py --write-reference"


def test_the_settings_command_prints_defaults_and_what_a_recipe_resolves_to(capsys):
    from train import settings

    assert settings.main(["--section", "calibrate"]) == 0
    assert "passes = 2    (int 1 to 100)" in capsys.readouterr().out
    assert settings.main(["--config", "train/configs/real256.yaml", "--section", "study",
                          "--set", "study.lr=0.02"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert " * image_size = 160" in printed and " * lr = 0.02" in printed and "   nesterov = true" in printed


def test_a_resolved_config_loads_as_every_section_resolved(tmp_path):
    import dataclasses

    from utils.pipeline.settings import SCHEMAS, write_resolved_config

    recipe = CONFIGS[[p.name for p in CONFIGS].index("real256.yaml")]
    configs = {section: load_section(recipe, section, schema, {"epochs": 2} if section == "study" else None)
               for section, schema in SCHEMAS.items()}
    path = write_resolved_config(tmp_path / "resolved_config.yaml", configs)
    for section, schema in SCHEMAS.items():
        assert dataclasses.asdict(load_section(path, section, schema)) == dataclasses.asdict(configs[section])
    assert load_section(path, "study", StudyConfig).epochs == 2


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
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\]; did you mean 'epoch' -> 'epochs'; every key"):
        load_section(_write(tmp_path, "backbone:\n  epoch: 2\n"), "backbone", BackboneConfig)


def test_wrong_type_is_an_error(tmp_path):
    path = _write(tmp_path, "backbone:\n  epochs: two\n")
    with pytest.raises(ConfigError, match="epochs: must be a valid integer, got 'two'"):
        load_section(path, "backbone", BackboneConfig)
    with pytest.raises(ConfigError, match="amp"):
        load_section(_write(tmp_path, "backbone:\n  amp: half\n"), "backbone", BackboneConfig)


def test_missing_section_is_every_default_and_a_missing_file_an_error(tmp_path):
    assert load_section(_write(tmp_path, "backbone: {}\n"), "study", StudyConfig) == StudyConfig()
    with pytest.raises(ConfigError, match="expected sections of keys"):
        load_section(_write(tmp_path, "- study\n"), "study", StudyConfig)
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
    from utils.ensemble.config import ENSEMBLE_SECTION, EnsembleConfig, ensemble_config

    for body, key in ((f"study:\n  lr: {text}\n", "lr"), (f"study:\n  grad_clip: {text}\n", "grad_clip"),
                      (f"study:\n  class_weights: [1, 1, {text}, 1]\n", r"class_weights\[2\]")):
        with pytest.raises(ConfigError, match=rf"c\.yaml \[study\]: {key}: must be a finite number"):
            load_section(_write(tmp_path, body), "study", StudyConfig)
    with pytest.raises(ConfigError, match=r"with --set: none_weight: must be a finite number"):
        load_section(_write(tmp_path, "study: {}\n"), "study", StudyConfig, parse_overrides([f"none_weight={text}"]))
    # The ensemble section: from a config file, and from a manifest (where the old checks, v < 0, let NaN by).
    path = _write(tmp_path, f"{ENSEMBLE_SECTION}:\n  model_weights: {{frcnn: {text}}}\n")
    with pytest.raises(ConfigError, match=r"model_weights\[frcnn\]: must be a finite number"):
        load_section(path, ENSEMBLE_SECTION, EnsembleConfig)
    for key in ("none_classifier_weight", "box_none_power", "wbf_iou_thr"):
        with pytest.raises(ConfigError, match=rf"manifest\.json \[{ENSEMBLE_SECTION}\]: {key}: must be a finite"):
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
    (["--size", "0"], "argument --size: must be at least 16, got 0"),
    (["--size", "100000"], "argument --size: must be at most 4096, got 100000"),
    (["--folds", "1"], "argument --folds: must be at least 2, got 1"),
    (["--workers", "0"], "argument --workers: must be at least 1, got 0"),
    (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
])
def test_prepare_refuses_option_values_out_of_range(tmp_path, capsys, argv, message):
    from train import prepare

    with pytest.raises(SystemExit):
        prepare.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "out"), *argv])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, message", [
    ("epochs=-1", "epochs: must be greater than or equal to 1, got -1"),
    ("lr=0", "lr: must be greater than 0, got 0"),
    ("image_size=abc", "image_size: must be a valid integer"),
    ("ema_decay=1.5", "ema_decay: must be less than 1, got 1.5"),
    ("label_smoothing=1", "label_smoothing: must be less than 1"),
])
def test_training_options_out_of_range_stop_before_anything_runs(tmp_path, override, message):
    from train import train_kind

    with pytest.raises(SystemExit, match=message):
        train_kind.main(["--kind", "study", "--prepared", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "run"),
                         "--config", "train/configs/demo.yaml", "--set", override])
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- configs as untrusted text

BILLION_LAUGHS = "".join(["a: &a [x, x, x, x, x, x, x, x, x]\n"] + [
    f"{chr(98 + k)}: &{chr(98 + k)} [{', '.join([f'*{chr(97 + k)}'] * 9)}]\n" for k in range(8)])


def _one_line(err) -> str:
    text = str(err.value) if hasattr(err, "value") else str(err)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("text", [BILLION_LAUGHS, "study:\n  epochs: &e 2\n  seed: *e\n"])
def test_yaml_aliases_are_refused_in_a_file_and_in_set(tmp_path, text):
    """An alias expands a few hundred bytes into gigabytes (main ended in MemoryError after half a minute);
    no config needs one, so ``*name`` is refused where it is read, in one line naming where."""
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML: alias \*\w is not allowed") as err:
        load_section(_write(tmp_path, text), "study", StudyConfig)
    _one_line(err)
    laughs = "[" + ", ".join(["&a [x, x, x, x, x, x, x, x]"] + ["*a"] * 8) + "]"
    with pytest.raises(ConfigError, match=r"--set folds: not valid YAML: alias \*a") as err:
        parse_overrides([f"folds={laughs}"])
    _one_line(err)
    # An anchor alone is harmless and still reads.
    assert load_section(_write(tmp_path, "study:\n  epochs: &e 2\n"), "study", StudyConfig).epochs == 2


def test_an_oversized_config_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    from utils.core import config as config_module

    path = _write(tmp_path, "study:\n  epochs: 2\n" + "# padding\n" * (config_module.MAX_CONFIG_BYTES // 10 + 1))
    monkeypatch.setattr(config_module.yaml, "load", lambda *a, **k: pytest.fail("parsed an oversized config"))
    with pytest.raises(ConfigError, match=rf"c\.yaml: \d+ bytes; a config is at most {config_module.MAX_CONFIG_BYTES}"):
        load_section(path, "study", StudyConfig)
    with pytest.raises(ConfigError, match="--set lr: .* characters; a config is at most"):
        parse_overrides(["lr=" + "1" * (config_module.MAX_CONFIG_BYTES + 1)])


@pytest.mark.parametrize("text, message", [
    ("study:\n  epochs: [1, 2\n", r"c\.yaml: not valid YAML: .* \(line \d+, column \d+\)"),
    ("study:\n  epochs: 2\n   lr: 1\n", r"c\.yaml: not valid YAML: .* \(line 3, column \d+\)"),
    ("study: " + "[" * 5000, r"c\.yaml: (nested too deeply to be a config|not valid YAML)"),
    ("study:\n  seed: " + "9" * 5000 + "\n", r"c\.yaml: Exceeds the limit \(4300 digits\)"),
    ("study:\n  lr: " + "9" * 400 + "\n", r"lr: must be a valid number, got 9{20,}\.\.\.9+$"),
    ("study:\n  lr: 1.0e+400\n", r"lr: must be a finite number, got inf"),
    ("study:\n  batch_size: 1000000000000\n", r"batch_size: must be less than or equal to 1024, got 1000000000000"),
    ("study:\n  workers: -5\n", r"workers: must be greater than or equal to 0, got -5"),
    ("study:\n  epochs: " + "y" * 10_000 + "\n", r"epochs: must be a valid integer, got 'yyy"),
    ("study:\n  arch: " + "x" * 10_000 + "\n", r"arch: must have at most 4096 characters, got 'xxx"),
    ("study:\n  tta_views: [" + "z" * 4000 + "]\n", r"\[study\]: unknown TTA view 'zzz.{20,60} \(unknown \['zzz"),
    ("study:\n  " + "k" * 1000 + ": 1\n", r"unknown key\(s\) \['kkk"),
])
def test_every_config_problem_is_one_short_line(tmp_path, text, message):
    """PyYAML's own errors span several lines and quoted values ran to megabytes: every message is one
    line naming the file, the key and the bound, with the value cut short."""
    with pytest.raises(ConfigError, match=message) as err:
        load_section(_write(tmp_path, text), "study", StudyConfig)
    assert len(_one_line(err)) < 700 + len(str(tmp_path))


def _schemas() -> dict:
    from utils.pipeline.settings import SCHEMAS

    return SCHEMAS


def _numbers(hint, bounds=()):
    """Each int or float inside a field's annotation (through Optional, lists and dicts), with the
    annotated_types bounds of the Annotated layers around it: ``[(type, bounds), ...]``."""
    import typing

    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(hint)
        found = [m for extra in extras for m in getattr(extra, "metadata", [extra])]
        return _numbers(base, (*bounds, *found))
    if hint in (int, float):
        return [(hint, bounds)]
    if hint is bool or origin is typing.Literal:
        return []
    return [n for arg in typing.get_args(hint) for n in _numbers(arg, () if origin in (list, dict) else bounds)]


def _declared(cls) -> dict:
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: _numbers(hints[f.name]) for f in dataclasses.fields(cls)}


def _limits(bounds):
    low = next((("ge", b.ge) for b in bounds if hasattr(b, "ge")), None) or \
        next((("gt", b.gt) for b in bounds if hasattr(b, "gt")), None)
    high = next((("le", b.le) for b in bounds if hasattr(b, "le")), None) or \
        next((("lt", b.lt) for b in bounds if hasattr(b, "lt")), None)
    return low, high


def test_every_number_of_every_schema_has_a_declared_range():
    """A new key gets its range by being declared: a number without both bounds fails here."""
    unbounded = [f"{section}.{name}" for section, cls in _schemas().items()
                 for name, numbers in _declared(cls).items() for _, bounds in numbers if None in _limits(bounds)]
    assert not unbounded, f"numbers without a declared range: {unbounded}"


def _top_level_numbers():
    """``(section, name, int or float, (low, high), multiple_of)`` of every setting that is one number
    (or null), not a list or mapping of them."""
    import dataclasses
    import typing

    found = []
    for section, cls in _schemas().items():
        hints = typing.get_type_hints(cls)  # without the Annotated layers: is it a number itself?
        for field in dataclasses.fields(cls):
            plain = [a for a in typing.get_args(hints[field.name]) if a is not type(None)] or [hints[field.name]]
            if len(plain) == 1 and plain[0] in (int, float):
                (kind, bounds), = _declared(cls)[field.name]
                step = next((b.multiple_of for b in bounds if hasattr(b, "multiple_of")), 1)
                found.append((section, field.name, kind, _limits(bounds), step))
    return sorted(found, key=str)


@given(st.sampled_from(_top_level_numbers()), st.integers(0, 10**30), st.booleans())
def test_every_number_setting_at_its_bounds_reads_and_beyond_them_is_refused(setting, beyond, low_side):
    """Each setting at its bound is accepted (or refused only by another rule), and any integer beyond
    it (up to 10^30, and negative) is one line naming the key and the bound."""
    from utils.core.config import from_mapping

    section, name, kind, (low, high), step = setting
    cls = _schemas()[section]
    (rule, bound) = low if low_side else high
    at = bound if rule in ("ge", "le") else (bound + 1 if kind is int else bound + 1e-6) if rule == "gt" else \
        (bound - 1 if kind is int else bound - 1e-6)
    try:
        from_mapping(cls, {name: kind(at)}, f"c.yaml [{section}]")
    except ConfigError as err:
        assert f"{name}: must be" not in str(err), err  # another rule (resize >= image_size) may refuse it
    outside = (bound - step - beyond * step) if low_side else (bound + step + beyond * step)  # on the grid
    outside = kind(outside) if kind is int else float(outside)
    with pytest.raises(ConfigError, match=rf"c\.yaml \[{section}\]: {name}: must be (greater|less) than") as err:
        from_mapping(cls, {name: outside}, f"c.yaml [{section}]")
    _one_line(err)


@given(st.integers(1, 12), st.integers(2, 12), st.booleans())
def test_alias_chains_of_any_shape_are_refused_in_one_line(depth, width, in_set):
    """Aliases nested ``depth`` deep, ``width`` wide (up to 12^12 leaves once expanded): refused as soon as
    the first alias is met, in a file or in --set."""
    from utils.core.config import MAX_CONFIG_BYTES, parse_overrides

    levels = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    levels += [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * width)}]" for k in range(1, depth + 1)]
    text = "{" + ", ".join(levels) + "}"
    assert len(text) < MAX_CONFIG_BYTES
    with pytest.raises(ConfigError, match=r"not valid YAML: alias \*l0 is not allowed") as err:
        if in_set:
            parse_overrides([f"folds={text}"])
        else:
            from utils.core.config import _load_yaml

            _load_yaml(text, "c.yaml")
    _one_line(err)


@given(st.one_of(st.integers(-(10**30), 10**30), st.sampled_from(["", "1e3", "0x10", "1.5", "9" * 5000])))
def test_integer_arguments_hold_their_bounds(value):
    """--batch-size, --workers and the web app's --port / --max-upload-mb / --max-pending: inside the bound
    the number, outside (huge, negative, not an integer) argparse's one-line usage error with the bound."""
    import argparse

    from infer.app import MAX_PENDING, MAX_UPLOAD_MB, get_args_parser
    from utils.core.config import MAX_BATCH_SIZE, MAX_WORKERS, batch_size_argument, worker_count

    app = get_args_parser()
    arguments = [(batch_size_argument, 1, MAX_BATCH_SIZE), (worker_count, 0, MAX_WORKERS)]
    arguments += [(app._option_string_actions[option].type, 1, high)
                  for option, high in (("--port", 65535), ("--max-upload-mb", MAX_UPLOAD_MB),
                                       ("--max-pending", MAX_PENDING))]
    for parse, low, high in arguments:
        if isinstance(value, int) and low <= value <= high:
            assert parse(str(value)) == value
            continue
        with pytest.raises(argparse.ArgumentTypeError) as err:
            parse(str(value))
        message = str(err.value)
        assert len(message) < 120 and (f"at least {low}" in message or f"at most {high}" in message
                                       or "expected an integer" in message), message


def _entry_parsers():
    """Every entry script's argparse parser (and its subcommands'), by module name."""
    import argparse
    import importlib
    import sys

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "kaggle"))  # kaggle/ is no package: its scripts import as top-level modules
    try:
        for folder in ("train", "infer", "kaggle"):
            for path in sorted((repo / folder).glob("*.py")):
                module = importlib.import_module(f"{folder}.{path.stem}" if folder != "kaggle" else path.stem)
                if hasattr(module, "get_args_parser"):
                    stack = [module.get_args_parser()]
                    while stack:
                        parser = stack.pop()
                        yield f"{folder}/{path.name}", parser
                        stack += [sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                                  for sub in action.choices.values()]
    finally:
        sys.path.remove(str(repo / "kaggle"))


def test_every_number_argument_of_every_script_has_a_declared_range():
    """``type=int`` or ``type=float`` accepts 10^12 and NaN: each number option declares its range
    (``int_in``, ``float_in``, ``batch_size_argument``, ``worker_count``)."""
    unbounded = [f"{script} {action.option_strings[0]}" for script, parser in _entry_parsers()
                 for action in parser._actions if action.type in (int, float) and action.option_strings]
    assert not unbounded, f"number arguments without a range: {unbounded}"
