"""Strict YAML configs: one file per scale, one section per stage, every key known and typed.

A config file (``train/configs/full.yaml``, ``train/configs/demo.yaml``) has one top-level section
per training stage (``backbone``, ``study``, ...), holding the keys that differ from the defaults
(declared with their documentation in the stage's dataclass; a section left out is every default).
Each section is checked against that stage's dataclass: an unknown key, a value of the wrong type, a
float that is NaN or infinite, or a number outside the range its field declares (``batch_size: BatchSize``, pydantic's
``Annotated[int, Field(ge=1, le=1024)]``) is a :class:`ConfigError` in one line naming the file, the key
and the bound, so a typo can never be ignored silently. Command-line overrides (``--set epochs=2``) and
the configs a weights manifest stores go through the same check. A config is untrusted text: size-bounded,
without YAML aliases. The resolved config is saved beside the weights.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import re
import reprlib
import textwrap
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from utils.core.log import first_line

ConfigT = TypeVar("ConfigT")
# The largest side a model may train or predict at: above every radiograph of the competition, below what
# would exhaust memory before the first image (a manifest's input_size of 65536 is a damaged file).
MAX_IMAGE_SIZE = 4096
# Processes one setting may start (decoding, data loading): more than any machine's useful count, fewer
# than would exhaust it at start (a DataLoader starts all of its workers at once).
MAX_WORKERS = 64
# Images one model call may take: above what any accelerator holds at the sizes above, below what makes a
# data loader prefetch for minutes (its prefetch depth follows the batch size) before failing.
MAX_BATCH_SIZE = 1024
# Requests the web app admits at once (each holds its upload in memory), and uploads' size in MB.
MAX_PENDING = 64
MAX_UPLOAD_MB = 1024
MAX_EPOCHS = 10_000
MAX_BOXES = 1000  # boxes kept per image: the competition scores far fewer
# numpy's and torch's seeds are unsigned 32-bit integers
MAX_SEED = 2**32 - 1
# A config is a few kilobytes of text: a bigger file is not a config (a 50 MB one took 3 GB to parse).
MAX_CONFIG_BYTES = 1 << 20
# How much of a value an error message quotes: one line always, whatever was given.
QUOTED_CHARS = 60
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "train" / "configs" / "full.yaml"

# The declared ranges of the settings: a config field annotated with one of these is checked against it
# wherever a config is read (a file, --set, a manifest), by from_mapping, with the bound in the message.
# Every number of every schema has one (tests/test_config.py checks that no number is left unbounded).
Epochs = Annotated[int, Field(ge=1, le=MAX_EPOCHS)]
BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)]
Workers = Annotated[int, Field(ge=0, le=MAX_WORKERS)]
ImageSize = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIZE)]
BoxCount = Annotated[int, Field(ge=1, le=MAX_BOXES)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
FractionBelowOne = Annotated[float, Field(ge=0.0, lt=1.0)]  # momentum, smoothing, thresholds where 1 means nothing
OpenFraction = Annotated[float, Field(gt=0.0, lt=1.0)]
WarmupEpochs = Annotated[float, Field(ge=0.0, le=MAX_EPOCHS)]
LearningRate = Annotated[float, Field(gt=0.0, le=10.0)]
# A weight in a sum (a loss term, a model in the fusion, a blend): 0 switches the term off.
Weight = Annotated[float, Field(ge=0.0, le=1000.0)]
# A per-fold list (folds: [0, 2]); null: every fold.
Folds = Annotated[list[Annotated[int, Field(ge=0, le=99)]], Field(min_length=1, max_length=100)]


class _Yaml12BooleansLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true/false, so ``amp: off`` stays the string 'off') and
    without aliases: ``*name`` can expand a few hundred bytes into gigabytes, and no config needs one."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} is not allowed in a config "
                                              "(write the value out)", event.start_mark)
        return super().compose_node(parent, index)


_Yaml12BooleansLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12BooleansLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


class ConfigError(ValueError):
    """A config that does not match its schema; the message names the source and the key."""


def short(value: Any) -> str:
    """``repr(value)`` cut to :data:`QUOTED_CHARS` on one line: how every error message quotes a value
    (a config's value can be megabytes long; the message stays one line)."""
    shortened = reprlib.Repr()  # (its keyword arguments are Python 3.12's)
    shortened.maxstring = shortened.maxother = shortened.maxlong = QUOTED_CHARS
    text = shortened.repr(value)  # a repr escapes line breaks: one line
    return text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS - 3] + "..."


def _load_yaml(text: str, source: str):
    """The YAML document ``text``; any failure (bad syntax, an alias, nesting deeper than Python's stack,
    an integer of thousands of digits) is one line of :class:`ConfigError` naming ``source``."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters; a config is at most {MAX_CONFIG_BYTES} (is it one?)")
    try:
        return yaml.load(text, Loader=_Yaml12BooleansLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{source}: not valid YAML: {err.problem or err.context}{where}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {first_line(err)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a config") from None
    except ValueError as err:  # int() of a number with thousands of digits
        raise ConfigError(f"{source}: {first_line(err)}") from None


# Exact types (no "5" for 5, no 1 for true; ints are widened to floats), finite floats, and strings no
# longer than a path may be (a name or a path in a config is never megabytes).
_STRICT = ConfigDict(strict=True, allow_inf_nan=False, str_max_length=4096)


@functools.cache
def _field_validators(cls) -> dict[str, TypeAdapter]:
    """Per field of dataclass ``cls``, pydantic's strict validator of its annotation (:data:`_STRICT`)
    with the ranges it declares."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: TypeAdapter(hints[f.name], config=_STRICT) for f in dataclasses.fields(cls)}


def _describe(error: dict) -> str:
    """One pydantic error as ``key[index]: problem, got value``."""
    where = "".join(f"[{str(part)[:QUOTED_CHARS]}]" for part in error["loc"])
    problem = re.sub(r"^(Input|String|List|Dictionary|Value) should", "must", error["msg"])
    return f"{where}: {problem}, got {short(error['input'])}"


def unknown_key_hint(unknown: list[str], known) -> str:
    """What an unknown-key message adds: the closest known key to each (a typo's fix) and where every key
    is listed; short, where a section has dozens of keys."""
    close = {key: difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6) for key in unknown[:3]}
    meant = [f"{short(key)} -> {match[0]!r}" for key, match in close.items() if match]
    return (f"; did you mean {', '.join(meant)}" if meant else "") + "; every key: python train/settings.py"


def from_mapping(cls: type[ConfigT], mapping: dict, source: str) -> ConfigT:
    """Build dataclass ``cls`` from ``mapping``: unknown or missing keys, wrong types, non-finite floats
    and values outside a field's declared range raise :class:`ConfigError` (one line naming ``source``,
    the key, the bound and the value, cut short)."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(mapping).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, mapping)) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {short(unknown)}{unknown_key_hint(unknown, fields)}")
    validators = _field_validators(cls)
    values = {}
    for name, value in mapping.items():
        try:
            values[name] = validators[name].validate_python(value)
        except ValidationError as err:
            raise ConfigError(f"{source}: {name}{_describe(err.errors(include_url=False)[0])}") from None
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{source}: missing key(s) {missing}")
    try:
        return cls(**values)
    except ValueError as err:  # a dataclass's own check of its values (__post_init__)
        raise ConfigError(f"{source}: {first_line(err)}") from err


DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


class DeviceError(ConfigError):
    """A device setting that names no device, or one this machine does not have (every entry point that
    reports a ConfigError in one line reports this too)."""


def check_device_name(name) -> str:
    """``name`` if it is a device setting (:data:`DEVICE_NAMES`), else a :class:`DeviceError`: checked
    where a config or an argument is read, before any work (``gpu`` or ``cuda0`` never reach torch)."""
    if not isinstance(name, str) or not _DEVICE_NAME.fullmatch(name):
        raise DeviceError(f"device {short(name)}: expected {DEVICE_NAMES}")
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


def batch_size_argument(text: str) -> int:
    """An argparse type for ``--batch-size``: 1 to :data:`MAX_BATCH_SIZE`."""
    return bounded_int(text, 1, MAX_BATCH_SIZE)


def worker_count(text: str) -> int:
    """An argparse type: a number of processes, 0 to :data:`MAX_WORKERS` (``--workers``: 0 decodes in
    the main process)."""
    return bounded_int(text, 0, MAX_WORKERS)


def bounded_int(text: str, low: int, high: int | None = None) -> int:
    """``text`` as an integer in ``low`` to ``high`` (``None``: no upper bound), else argparse's one-line
    usage error naming the bound."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {short(text)}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}" if value < low
                                         else f"must be at most {high}, got {short(value)}")
    return value


def int_in(low: int, high: int):
    """An argparse type: an integer in ``low`` to ``high`` (every integer option has its range declared
    where it is declared: ``type=int_in(1, 100)``)."""
    def parse(text: str) -> int:
        return bounded_int(text, low, high)

    parse.__name__ = f"integer in {low}-{high}"
    return parse


def float_in(low: float, high: float):
    """An argparse type: a finite number in ``low`` to ``high``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {short(text)}") from None
        if not low <= value <= high:  # NaN fails this too
            raise argparse.ArgumentTypeError(f"must be in {low:g} to {high:g}, got {short(text)}")
        return value

    parse.__name__ = f"number in {low:g}-{high:g}"
    return parse


def parse_overrides(items: list[str] | None) -> dict:
    """``["epochs=2", "amp=off"]`` -> ``{"epochs": 2, "amp": "off"}`` (values parsed as YAML scalars)."""
    overrides = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {short(item)}: expected KEY=VALUE")
        overrides[key.strip()] = _load_yaml(text, f"--set {key.strip()[:QUOTED_CHARS]}") if text.strip() else None
    return overrides


def load_yaml_section(path, section: str) -> dict:
    """The raw mapping of section ``section`` of YAML file ``path`` (errors name the file); a section the
    file does not have is empty: every key at its default (a recipe says only what differs)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:  # before reading: a 50 MB file is not read into memory
        raise ConfigError(f"{path}: {path.stat().st_size} bytes; a config is at most {MAX_CONFIG_BYTES} (is it one?)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a readable text file ({type(err).__name__})") from None
    document = _load_yaml(text, str(path)) or {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected sections of keys, got {type(document).__name__}")
    mapping = document.get(section) or {}
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
            raise ConfigError(f"--set: unknown key(s) {short(unknown)} for [{section}]"
                              f"{unknown_key_hint(unknown, known)}")
        config = from_mapping(cls, {**dataclasses.asdict(config), **overrides}, f"{path} [{section}] with --set")
    return config


def save_config(config, path, section: str) -> Path:
    """Write the resolved ``config`` as ``{section: {...}}`` YAML (loadable again with :func:`load_section`)."""
    from utils.core.files import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump({section: dataclasses.asdict(config)}, sort_keys=False))


# ----------------------------------------------------------------------------- the settings' documentation

def field_docs(cls) -> dict[str, str]:
    """Each field of dataclass ``cls`` -> its one-paragraph documentation: the string written right below
    the field in its class body (an attribute docstring), searched through the dataclass bases too."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _bounds(metadata) -> dict[str, object]:
    """The range constraints pydantic's ``Field`` declares in an ``Annotated`` field: name -> value."""
    found = {}
    for item in metadata:
        for constraint in getattr(item, "metadata", [item]):
            for name in ("ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length"):
                if getattr(constraint, name, None) is not None:
                    found[name] = getattr(constraint, name)
    return found


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range_words(bounds: dict) -> str:
    """``{"ge": 1, "le": 10}`` -> ``1 to 10``; ``{"gt": 0, "le": 1}`` -> ``> 0, <= 1``."""
    parts = []
    if "ge" in bounds and "le" in bounds:
        parts.append(f"{_number(bounds['ge'])} to {_number(bounds['le'])}")
    else:
        words = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        parts += [f"{word} {_number(bounds[name])}" for name, word in words if name in bounds]
    if "multiple_of" in bounds:
        parts.append(f"a multiple of {bounds['multiple_of']}")
    if "min_length" in bounds or "max_length" in bounds:
        parts.append(f"{bounds.get('min_length', 0)} to {bounds.get('max_length', 'any number of')} items")
    return ", ".join(parts)


def describe_type(hint) -> str:
    """A field's annotation in words with its declared range: ``int 1 to 10000``, ``one of a, b``,
    ``list of str``, ``... or null``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        base, *metadata = args
        words = _range_words(_bounds(metadata))
        return describe_type(base) + (f" {words}" if words else "")
    if origin in (typing.Union, types.UnionType):
        named = [describe_type(a) for a in args if a is not type(None)]
        return " | ".join(named) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is list:
        return f"list of ({describe_type(args[0])})" if typing.get_origin(args[0]) is Annotated \
            else f"list of {describe_type(args[0])}"
    if origin is dict:
        return f"{describe_type(args[0])} -> {describe_type(args[1])}"
    return getattr(hint, "__name__", str(hint))


def field_default(cls, name: str):
    """Field ``name``'s default value in dataclass ``cls`` (a fresh copy of a mutable one)."""
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    return found.default_factory() if found.default_factory is not dataclasses.MISSING else found.default


def setting_rows(cls) -> list[dict]:
    """Every field of config dataclass ``cls`` in declaration order: ``key``, ``default``, ``type`` (with the
    declared range) and ``doc``."""
    hints, docs = typing.get_type_hints(cls, include_extras=True), field_docs(cls)
    return [{"key": f.name, "default": field_default(cls, f.name), "type": describe_type(hints[f.name]),
             "doc": docs.get(f.name, "")} for f in dataclasses.fields(cls)]


def yaml_value(value) -> str:
    """A value as it is written in a config file (flow style, one line)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()
