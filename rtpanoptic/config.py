"""Typed configuration: dataclasses, YAML files and ``key.sub=value`` command-line overrides.

There is no global config object: build one with :func:`load_config` and pass it down::

    cfg = load_config(TrainConfig, "my.yaml", ["optim.lr=0.02", "data.size=[256,512]"])
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config's dataclass."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain (YAML-serialisable) dict of a config dataclass; tuples become lists."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def _float_spelling(text: str) -> float | str:
    """``text`` as a float when Python or YAML reads it as one (``1e-3``, which YAML 1.1 leaves a
    string, ``1_000.5``, ``.inf``, ``nan``); else ``text`` unchanged."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, float) else text


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):  # Optional[X] and X | None
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else None
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            items = [_coerce(item, v, f"{where}[{i}]") if item else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):
            value = _float_spelling(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build ``cls`` from a mapping; unknown keys and wrongly typed values raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def merge(cfg: T, data: Mapping[str, Any], where: str = "config") -> T:
    """A copy of ``cfg`` with the (nested) values of ``data`` replaced."""
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {sorted(names)}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[key] = merge(current, value, f"{where}.{key}")
        else:
            changes[key] = _coerce(hints[key], value, f"{where}.{key}")
    return dataclasses.replace(cfg, **changes)


def parse_override(text: str) -> dict[str, Any]:
    """``"a.b=1"`` -> ``{"a": {"b": 1}}``; the value is parsed as YAML (``x=[1,2]``, ``y=null``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse the value: {exc}") from None
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML file; :class:`ConfigError` naming the file when it is missing, a folder,
    unreadable, not UTF-8 text, not YAML or not a mapping."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return dict(data)


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: T | None = None,
) -> T:
    """``base`` (or ``cls()``), then the YAML file at ``path``, then the overrides, in that order."""
    cfg = base if base is not None else cls()
    if path is not None:
        cfg = merge(cfg, load_yaml(path), where=str(path))
    for text in overrides:
        cfg = merge(cfg, parse_override(text), where=f"override {text!r}")
    return cfg


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric config field may take: ``low <= v <= high`` (``<`` with ``low_open`` /
    ``high_open``; None: unbounded on that side), finite unless ``allow_inf`` (NaN never)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allow_inf: bool = False

    def __contains__(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if math.isnan(value) or (math.isinf(value) and not self.allow_inf):
            return False
        if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else repr(x)

        finite = "" if self.allow_inf else "a finite number "
        if self.low is not None and self.high is not None:
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{finite}in {lo}{num(self.low)}, {num(self.high)}{hi}"
        if self.low is not None:
            return f"{finite}{'>' if self.low_open else '>='} {num(self.low)}"
        if self.high is not None:
            return f"{finite}{'<' if self.high_open else '<='} {num(self.high)}"
        return finite.strip() or "a number"


def numeric_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of the fields of dataclass ``cls`` (recursively) that hold numbers: ``int`` /
    ``float``, optional, or tuples / lists of them."""
    def holds_number(tp) -> bool:
        if tp in (int, float):
            return True
        return any(holds_number(a) for a in typing.get_args(tp) if a is not Ellipsis)

    hints = typing.get_type_hints(cls)
    names: list[str] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            names += numeric_fields(tp, f"{prefix}{f.name}.")
        elif holds_number(tp):
            names.append(prefix + f.name)
    return names


def check_ranges(cfg: Any, ranges: Mapping[str, Range], what: str) -> None:
    """Raise :class:`ConfigError` ``"<what>: <field> must be <range>, got <value>"`` for the first
    field of ``ranges`` (dotted names) outside its range; None values pass (optional fields), each
    item of a tuple / list is checked."""
    def items(value):
        if isinstance(value, (list, tuple)):
            for v in value:
                yield from items(v)
        elif value is not None:
            yield value

    for name, allowed in ranges.items():
        value = cfg
        for part in name.split("."):
            value = getattr(value, part)
        if any(v not in allowed for v in items(value)):
            each = "items" if isinstance(value, (list, tuple)) else ""
            raise ConfigError(f"{what}: {name}{' ' + each if each else ''} must be {allowed}, got {value!r}")


def save_config(cfg: Any, path: str | Path) -> None:
    from .safe_io import write_text

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
