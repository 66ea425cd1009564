"""Typed configs: one dataclass per task, mirrored key for key by a YAML file in configs/.

`load_config(Config, path, overrides)` reads the YAML, applies ``--set a.b=value`` overrides and
returns a typed instance. An unknown key or a value of the wrong type is a `UserError` naming the
dotted key, never silently ignored (minGPT's ``merge_from_args`` does the same; nanoGPT's ``exec``
configurator is what to avoid).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from recurrent.errors import UserError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting int -> float where harmless)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as err:
                errors.append(err)
        raise UserError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise UserError(f"config key {key!r}: expected one of {choices}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key!r}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return _from_mapping(tp, value, prefix=f"{key}.")
    else:
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    raise UserError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")


def _from_mapping(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        known = ", ".join(sorted(prefix + f for f in fields))
        raise UserError(f"unknown config key {prefix + str(unknown[0])!r} (known keys: {known})")
    values = {name: _coerce(data[name], hints[name], prefix + name) for name in data}
    return cls(**values)


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build a (nested) config dataclass from plain data, validating keys and types."""
    return _from_mapping(cls, data)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config, fit for YAML and for checkpoints loaded weights_only."""
    return dataclasses.asdict(config)


def parse_override(item: str) -> tuple[str, Any]:
    """``"model.cell=gru"`` -> ``("model.cell", "gru")``; the value is parsed as YAML."""
    if "=" not in item:
        raise UserError(f"--set expects key=value, got {item!r} (for example --set model.cell=gru)")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (validation happens in `from_dict`)."""
    for item in overrides:
        key, value = parse_override(item)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                raise UserError(f"unknown config key {key!r} ({part!r} is not a config section)")
            node = child
        if parts[-1] not in node:
            known = ", ".join(sorted(node))
            raise UserError(f"unknown config key {key!r} (known keys here: {known})")
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path} (pass --config configs/<task>/<name>.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())
        raise UserError(f"config file {path} is not valid YAML: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file {path} must hold a mapping of sections, not {type(data).__name__}"
        )
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Defaults of ``cls``, updated by the YAML at ``path``, then by ``--set`` overrides."""
    data = to_dict(cls())
    if path is not None:
        _deep_update(data, read_yaml(path), cls)
    apply_overrides(data, overrides)
    return from_dict(cls, data)


def _deep_update(
    base: dict[str, Any], update: Mapping[str, Any], cls: Any, prefix: str = ""
) -> None:
    hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    for key, value in update.items():
        if key not in base:
            known = ", ".join(sorted(prefix + k for k in base))
            raise UserError(f"unknown config key {prefix + str(key)!r} (known keys: {known})")
        sub = hints.get(key)
        if (
            isinstance(value, Mapping)
            and isinstance(base[key], dict)
            and dataclasses.is_dataclass(sub)
        ):
            _deep_update(base[key], value, sub, prefix=f"{prefix}{key}.")
        else:
            base[key] = value


def add_run_arguments(parser: argparse.ArgumentParser, task: str, example: str) -> None:
    """The options every training CLI shares: --config, --set, --out-dir, --resume, --overwrite."""
    parser.add_argument("--config", required=True, help=f"YAML config, e.g. {example}")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set model.cell=gru train.max_steps=200 (repeatable; "
        "values are parsed as YAML; unknown keys and bad types are errors)",
    )
    parser.add_argument(
        "--out-dir", help=f"where best.pt and last.pt go (default: runs/{task}/<config name>)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out-dir from its last.pt"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a run already in --out-dir"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_dir(task: str, config_path: str, out_dir: str | None) -> Path:
    """--out-dir, or runs/<task>/<config file name without .yaml>."""
    return Path(out_dir) if out_dir else Path("runs") / task / Path(config_path).stem


def check_bounds(at_least_one: dict[str, float], not_negative: dict[str, float]) -> None:
    """Values the types allow but a run cannot use are a UserError naming the dotted key."""
    for key, value in at_least_one.items():
        if value < 1:
            raise UserError(f"config key {key!r} must be at least 1, got {value}")
    for key, value in not_negative.items():
        if value < 0:
            raise UserError(f"config key {key!r} must not be negative, got {value}")
