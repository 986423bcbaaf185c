"""Strict YAML configs: one file per scale, one section per stage, every key known and typed.

A config file (``train/configs/full.yaml``, ``train/configs/demo.yaml``) has one top-level section
per training stage (``backbone``, ``study``, ...). Each section is checked against that stage's
dataclass: an unknown key, a missing section, a value of the wrong type or a float that is NaN or
infinite is a :class:`ConfigError` naming the file and the key, so a typo can never be ignored silently.
Command-line overrides (``--set epochs=2``) go through the same check. The resolved config is saved beside the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

ConfigT = TypeVar("ConfigT")
# The largest side a model may train or predict at: above every radiograph of the competition, below what
# would exhaust memory before the first image (a manifest's input_size of 65536 is a damaged file).
MAX_IMAGE_SIZE = 4096
# Processes one setting may start (decoding, data loading): more than any machine's useful count, fewer
# than would exhaust it at start (a DataLoader starts all of its workers at once).
MAX_WORKERS = 64
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "train" / "configs" / "full.yaml"


class _Yaml12BooleansLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so ``amp: off`` stays the string 'off'."""


_Yaml12BooleansLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12BooleansLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _load_yaml(text: str):
    return yaml.load(text, Loader=_Yaml12BooleansLoader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """A config that does not match its schema; the message names the source and the key."""


def _check_value(value: Any, annotation: Any, where: str) -> Any:
    """``value`` converted to ``annotation`` when that is lossless (int -> float), else an error."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(annotation))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return [_check_value(v, item_type, f"{where}[{k}]") for k, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(annotation) or (Any, Any)
        return {_check_value(k, key_type, f"{where} key"): _check_value(v, value_type, f"{where}[{k}]")
                for k, v in value.items()}
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        # Every float setting is finite: a NaN passes every range check (all its comparisons are false).
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    if not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_mapping(cls: type[ConfigT], mapping: dict, source: str) -> ConfigT:
    """Build dataclass ``cls`` from ``mapping``; unknown keys and wrong types raise :class:`ConfigError`."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(mapping).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {name: _check_value(value, hints[name], f"{source}: {name}") for name, value in mapping.items()}
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{source}: missing key(s) {missing}")
    try:
        return cls(**values)
    except ValueError as err:  # a dataclass's own check of its values (__post_init__)
        raise ConfigError(f"{source}: {err}") from err


DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


class DeviceError(ConfigError):
    """A device setting that names no device, or one this machine does not have (every entry point that
    reports a ConfigError in one line reports this too)."""


def check_device_name(name) -> str:
    """``name`` if it is a device setting (:data:`DEVICE_NAMES`), else a :class:`DeviceError`: checked
    where a config or an argument is read, before any work (``gpu`` or ``cuda0`` never reach torch)."""
    if not isinstance(name, str) or not _DEVICE_NAME.fullmatch(name):
        raise DeviceError(f"device {name!r}: expected {DEVICE_NAMES}")
    return name


def device_problems(name) -> list[str]:
    """A config's ``__post_init__`` check: ``[]`` for a device setting, else its one problem."""
    try:
        check_device_name(name)
    except DeviceError as err:
        return [str(err)]
    return []


def device_argument(text: str) -> str:
    """An argparse type for ``--device``: a bad name is argparse's one-line usage error."""
    try:
        return check_device_name(text)
    except DeviceError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (``--batch-size``), else argparse's one-line usage error."""
    return _bounded_int(text, 1)


def worker_count(text: str) -> int:
    """An argparse type: a number of processes, 0 to :data:`MAX_WORKERS` (``--workers``: 0 decodes in
    the main process)."""
    return _bounded_int(text, 0, MAX_WORKERS)


def _bounded_int(text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}" if value < low
                                         else f"must be at most {high}, got {value}")
    return value


def parse_overrides(items: list[str] | None) -> dict:
    """``["epochs=2", "amp=off"]`` -> ``{"epochs": 2, "amp": "off"}`` (values parsed as YAML scalars)."""
    overrides = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = _load_yaml(text) if text.strip() else None
    return overrides


def load_yaml_section(path, section: str) -> dict:
    """The raw mapping of section ``section`` of YAML file ``path`` (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        document = _load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(document, dict) or section not in document:
        sections = sorted(document) if isinstance(document, dict) else []
        raise ConfigError(f"{path}: no section {section!r}; sections: {sections}")
    mapping = document[section] or {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path} [{section}]: expected a mapping of keys, got {type(mapping).__name__}")
    return dict(mapping)


def load_section(path, section: str, cls: type[ConfigT], overrides: dict | None = None) -> ConfigT:
    """Section ``section`` of YAML file ``path`` as dataclass ``cls``, with ``overrides`` applied on top."""
    config = from_mapping(cls, load_yaml_section(path, section), f"{path} [{section}]")
    if overrides:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"--set: unknown key(s) {unknown} for [{section}]; known keys: {sorted(known)}")
        config = from_mapping(cls, {**dataclasses.asdict(config), **overrides}, f"{path} [{section}] with --set")
    return config


def save_config(config, path, section: str) -> Path:
    """Write the resolved ``config`` as ``{section: {...}}`` YAML (loadable again with :func:`load_section`)."""
    from utils.files import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump({section: dataclasses.asdict(config)}, sort_keys=False))
