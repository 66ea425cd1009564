"""Typed configs: one dataclass per task, mirrored key for key by a YAML file in configs/.

`load_config(Config, path, overrides)` reads the YAML, applies ``--set a.b=value`` overrides and
returns a typed instance. An unknown key or a value of the wrong type is a `UserError` naming the
dotted key, never silently ignored (minGPT's ``merge_from_args`` does the same; nanoGPT's ``exec``
configurator is what to avoid).

Values are read the same way from a YAML file and from ``--set``, as people write them:

- numbers: ``3e-4``, ``3E-4``, ``1e3``, ``.5``, ``+1.5``, ``1_000`` (decimal only: ``010`` is ten,
  ``0x10`` is refused). PyYAML follows YAML 1.1, which reads ``3e-4`` as a string and ``010`` as
  eight; `ConfigLoader` resolves plain scalars by YAML 1.2's core schema instead. An int field
  takes a whole number written as a float (``1e3`` -> 1000) and refuses ``1.5``. A float field also
  takes ``nan``, ``inf``, ``-inf`` (or YAML's ``.nan``, ``.inf``); the task's bounds
  (`check_bounds`) then refuse them wherever they make no sense, which today is every field.
- booleans: ``true`` / ``false`` in any case, and ``yes`` / ``no``, ``on`` / ``off``, ``1`` / ``0``
  where the field is a bool (elsewhere ``no`` stays the text "no", unlike YAML 1.1).
- ``null`` (or ``~``) for an optional field.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from recurrent.errors import SHOWN_PATH_CHARS, UserError, shown

T = TypeVar("T")

# --- values as people write them ---------------------------------------------------------------

_DIGITS = r"[0-9]+(?:_[0-9]+)*"  # 1_000: an underscore between digits, as in Python
_INT = rf"[-+]?{_DIGITS}"
# A float has a point or an exponent: 3e-4, 3E-4, 1e3, .5, +1.5, 1., 1_000.5
_FLOAT = (
    rf"[-+]?(?:{_DIGITS}\.(?:{_DIGITS})?(?:[eE][-+]?[0-9]+)?"
    rf"|\.{_DIGITS}(?:[eE][-+]?[0-9]+)?|{_DIGITS}[eE][-+]?[0-9]+)"
)
_INT_RE = re.compile(_INT)
_FLOAT_RE = re.compile(_FLOAT)
_NONFINITE_RE = re.compile(r"[-+]?\.?(?:inf|infinity|nan)", re.IGNORECASE)  # also YAML's .inf
_BOOL_WORDS = {
    **dict.fromkeys(("true", "yes", "on", "1"), True),
    **dict.fromkeys(("false", "no", "off", "0"), False),
}


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core schema for plain scalars, plus ``1_000``.

    YAML 1.1 (PyYAML's default) reads ``3e-4`` and ``1e3`` as strings, ``010`` as octal eight,
    ``1:30`` as ninety, ``no`` / ``on`` as booleans and ``2024-01-01`` as a date; here the first
    two are floats, ``010`` is ten and the rest stay strings (`_coerce` reads ``no`` where a bool
    is expected). Used for YAML files and ``--set`` values alike.
    """

    yaml_implicit_resolvers: dict = {}  # its own table, not a copy of YAML 1.1's

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """PyYAML's, but a key given twice is an error (PyYAML keeps the last one silently, so a
        second ``lr:`` lower in a file would win unseen)."""
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"found the key {shown(key_node.value)} twice",
                        key_node.start_mark,
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _decimal(text: str) -> int | float:
    """``int(text)`` (leading zeros too: YAML 1.1 would read 010 as octal eight)."""
    try:
        return int(text)
    except ValueError:  # more digits than Python converts: only its sign matters to the bounds
        return -math.inf if text.startswith("-") else math.inf


def _construct_int(loader: ConfigLoader, node: yaml.ScalarNode) -> int | float:
    text = loader.construct_scalar(node)
    if _INT_RE.fullmatch(text):
        return _decimal(text)
    return loader.construct_yaml_int(node)  # an explicit !!int 0x10


for _tag, _pattern, _first in [
    ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ("bool", r"true|True|TRUE|false|False|FALSE", list("tTfF")),
    ("int", _INT, list("-+0123456789")),
    ("float", rf"{_FLOAT}|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)", list("-+0123456789.")),
    ("merge", r"<<", ["<"]),
]:
    ConfigLoader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(rf"^(?:{_pattern})$"), _first
    )
ConfigLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_number(text: str) -> int | float | None:
    """A number as people write it (``3e-4``, ``.5``, ``+1.5``, ``1_000``, ``inf``), else None."""
    text = text.strip()
    if _INT_RE.fullmatch(text):
        return _decimal(text)
    if _FLOAT_RE.fullmatch(text):
        return float(text)
    if _NONFINITE_RE.fullmatch(text):
        return float(text.replace(".", ""))  # Python's float() reads nan, -inf, +infinity
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        return _BOOL_WORDS.get(value.strip().lower())
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, str):
        value = parse_number(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)  # 1e3 -> 1000; 1.5 is refused
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, str):
        value = parse_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond any float
        return None


_SCALARS = {bool: _as_bool, int: _as_int, float: _as_float}
_EXPECTED = {
    bool: "bool (true or false)",
    int: "int (a whole number)",
    float: "float (a number such as 3e-4)",
}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # "Union" on Python 3.14
        return " | ".join(
            "None" if arg is type(None) else _type_name(arg) for arg in typing.get_args(tp)
        )
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
        raise UserError(f"config key {shown(key)}: expected {_type_name(tp)}, got {shown(value)}")
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise UserError(
                f"config key {shown(key)}: expected one of {choices}, got {shown(value)}"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {shown(key)}: expected a list, got {shown(value)}")
        item_type = args[0] if args else Any
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp in _SCALARS:
        converted = _SCALARS[tp](value)
        if converted is not None:
            return converted
        raise UserError(
            f"config key {shown(key)}: expected {_EXPECTED.get(tp, _type_name(tp))}, "
            f"got {shown(value)}"
        )
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (Mapping, list)):  # "a: b.txt" or "[x]" read as YAML
            raise UserError(
                f"config key {shown(key)}: expected a string, got {shown(value)}; a value with "
                f"': ', '[' or '{{' is read as YAML, so quote it (--set '{key}=\"...\"')"
            )
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return _from_mapping(tp, value, prefix=f"{key}.")
    else:
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    raise UserError(f"config key {shown(key)}: expected {_type_name(tp)}, got {shown(value)}")


def _from_mapping(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise unknown_key(prefix + str(unknown[0]), [prefix + f for f in fields])
    values = {name: _coerce(data[name], hints[name], prefix + name) for name in data}
    return cls(**values)


def unknown_key(key: str, known: Iterable[str]) -> UserError:
    """The error for an unknown dotted key: the nearest known key when one is close (a typo such
    as ``train.lrr``), then every known key of its section."""
    known = sorted(known)
    section = key[: key.rfind(".") + 1]  # "train." of "train.lrr": compared without it
    names = {name.removeprefix(section): name for name in known}
    close = difflib.get_close_matches(key.removeprefix(section), list(names), n=1)
    hint = f"did you mean {names[close[0]]!r}? " if close else ""
    return UserError(f"unknown config key {shown(key)} ({hint}known keys: {', '.join(known)})")


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build a (nested) config dataclass from plain data, validating keys and types."""
    return _from_mapping(cls, data)


def older_defaults(config: Any, older: Mapping[str, Any]) -> dict[str, Any]:
    """The values that a checkpoint written before a key existed ran with, for `with_defaults`:
    the task config's defaults (``config``, a dataclass), where ``older`` ({dotted key: value})
    replaces those whose default is not the behaviour before the key (char_lm's
    ``data.state_reset``: 0.02 since 2026-12-05, and no restarts before)."""
    values = to_dict(config)
    for key, value in older.items():
        section, name = key.split(".")
        values[section][name] = value
    return values


def with_defaults(saved: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config (a checkpoint's) with the keys it lacks at their ``defaults``: a checkpoint
    written before a key existed ran as that key's default does, or as its value in the task's
    `older_defaults` where the default changed the behaviour. A section that is not a mapping (an
    edited file) is a `UserError`."""
    filled = dict(saved)
    for section, values in defaults.items():
        if not isinstance(values, Mapping):
            filled.setdefault(section, values)
        elif isinstance(filled.get(section, {}), Mapping):
            filled[section] = {**values, **filled.get(section, {})}
        else:
            kind = type(filled[section]).__name__
            raise UserError(f"its config's {section!r} is not a section of settings (type {kind})")
    return filled


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
    """{dotted key: value} of a config's sections (a section that is not a mapping is left out)."""
    return {
        f"{section}.{name}": value
        for section, values in config.items()
        if isinstance(values, Mapping)
        for name, value in values.items()
    }


def missing_keys(saved: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """The dotted keys of ``defaults`` that a saved config (an older version's) lacks."""
    return sorted(_flat(defaults).keys() - _flat(saved).keys())


def changed_settings(
    saved: Mapping[str, Any], current: Mapping[str, Any], older: Iterable[str] = ()
) -> list[str]:
    """``"train.lr 0.002 -> 0.001"`` for each setting whose value in ``current`` differs from a
    checkpoint's ``saved`` config; a key in ``older`` (the checkpoint's version had none) says
    so."""
    old, new, older = _flat(saved), _flat(current), set(older)
    return [
        f"{key} {shown(old[key], SHOWN_PATH_CHARS)} -> {shown(value, SHOWN_PATH_CHARS)}"
        + (" (the run predates this key)" * (key in older))
        for key, value in new.items()
        if key in old and old[key] != value
    ]


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config, fit for YAML and for checkpoints loaded weights_only."""
    return dataclasses.asdict(config)


# PyYAML raises these, not YAMLError, on some text: RecursionError for deeply nested collections,
# ValueError for integers beyond Python's digit limit, bad "\U" escapes or impossible timestamps,
# OverflowError for "\UFFFFFFFF" (found by tests/test_fuzz_parsers.py).
YAML_BUILD_ERRORS = (RecursionError, ValueError, OverflowError, AttributeError)


# A YAML alias (``*name``) or a pickle's memo stands for a value already read, without copying it:
# nine levels of ten aliases each are 10^9 values in a file of 400 bytes ("billion laughs"), which
# reading a config expands (a list's items checked one by one, an error quoting the value: 4 GB of
# memory in 8 s before the machine's memory ran out). Refused past this many more values (items,
# and the characters of strings) than written out.
MAX_REPEATED_VALUES = 100_000


def repeated_values(data: Any) -> float:
    """How many more values ``data`` holds, every shared part (a YAML alias's, a pickle's memo's)
    counted each time it appears, than once (`value_counts`); infinite for a part that holds
    itself."""
    expanded, written = value_counts(data)
    return expanded - written


def value_counts(data: Any) -> tuple[float, int]:
    """(expanded, written): how many values ``data`` holds, items of lists, tuples, sets and dicts
    (keys and values) and the characters of strings, with every shared part counted each time it
    appears, and counted once. ``expanded`` is infinite for a part that holds itself. Linear in
    the distinct parts: what is shared is sized once."""
    sizes: dict[int, int] = {}  # the expanded size of each container sized so far, by id
    # each container opened and not yet sized (this one's ancestors), by id: its parts, and the
    # containers among them
    opened: dict[int, tuple[Sequence[Any], list[Any]]] = {}
    seen_strings: set[int] = set()
    written, stack = 0, [data]
    while stack:
        item = stack[-1]
        if id(item) in sizes:
            stack.pop()
            continue
        if id(item) not in opened:  # first visit: size its unsized parts first
            parts = _parts(item)
            if parts is None:  # `data` itself is no container
                stack.pop()
                continue
            opened[id(item)] = parts, [part for part in parts if isinstance(part, _CONTAINERS)]
            for part in opened[id(item)][1]:
                if id(part) not in sizes:
                    if id(part) in opened:  # an ancestor: the part holds itself
                        return math.inf, written
                    stack.append(part)
            continue
        parts, contained = opened.pop(id(item))
        texts = [part for part in parts if isinstance(part, (str, bytes))]
        new_texts = {id(text): len(text) for text in texts if id(text) not in seen_strings}
        seen_strings.update(new_texts)
        numbers = len(parts) - len(contained) - len(texts)  # (one each, however often shared)
        size = len(parts) + numbers + sum(map(len, texts)) + sum(sizes[id(p)] for p in contained)
        written += len(parts) + numbers + sum(new_texts.values())
        sizes[id(item)] = size
        stack.pop()
    if _parts(data) is None:
        return _leaf_size(data), _leaf_size(data)
    return sizes[id(data)], written


_CONTAINERS = (Mapping, list, tuple, set, frozenset)


def _parts(item: Any) -> list[Any] | tuple[Any, ...] | None:
    """The items of a container (a dict's keys and values), None for anything else."""
    if isinstance(item, Mapping):
        return [*item.keys(), *item.values()]
    if isinstance(item, (list, tuple)):
        return item
    if isinstance(item, (set, frozenset)):
        return list(item)
    return None


def _leaf_size(item: Any) -> int:
    """A string's or bytes' length; 1 for any other value (a number, a tensor)."""
    return len(item) if isinstance(item, (str, bytes)) else 1


def describe_cell(model: Mapping[str, Any]) -> str:
    """ "2-layer LSTM" from a task's ``model`` section, a saved config's dict (keys may be missing):
    the start of the architecture line of every model card."""
    layers, cell = model.get("num_layers"), model.get("cell")
    count = f"{layers}-layer " if isinstance(layers, int) else ""
    return count + (cell.upper() if isinstance(cell, str) else "recurrent")


def data_name(path: str) -> str:
    """How a card names a data file: "dataset_flickr8k.json" -> "flickr8k",
    "../data/tinyshakespeare.txt" -> "tinyshakespeare"."""
    stem = Path(path).stem
    return re.sub(r"^dataset_", "", stem) or path


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ``("train.lr", 0.0003)``; the value is read as in a YAML file."""
    if "=" not in item:
        raise UserError(
            f"--set expects key=value, got {shown(item)} (for example --set model.cell=gru)"
        )
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.load(raw, Loader=ConfigLoader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except YAML_BUILD_ERRORS as err:  # text PyYAML parses but cannot build (see the constant)
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        raise UserError(f"config key {shown(key)}: cannot read the value ({reason})") from None
    if repeated_values(value) > MAX_REPEATED_VALUES:
        raise UserError(
            f"config key {shown(key)}: its value's aliases (*name) repeat more than "
            f"{MAX_REPEATED_VALUES:,} values (a 'billion laughs'); write the value out"
        )
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Set dotted keys in a nested dict to the values `parse_override` read (validation happens
    in `from_dict`)."""
    for key, value in overrides:
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                sections = [name for name, value in node.items() if isinstance(value, dict)]
                close = difflib.get_close_matches(part, sections, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UserError(
                    f"unknown config key {shown(key)} ({shown(part)} is not a config section{hint})"
                )
            node = child
        if parts[-1] not in node:
            section = key[: -len(parts[-1])]  # "train." of "train.lrr"
            raise unknown_key(key, [section + name for name in node])
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path, task: str = "<task>") -> dict[str, Any]:
    """The YAML file at ``path`` as a dict, its values read by `ConfigLoader` (as ``--set`` reads);
    a missing file names ``task``'s configs in the repository (as `config_hint` does)."""
    path = Path(path)
    if not path.is_file():
        problem = f"{path} is a folder" if path.is_dir() else f"not found: {path}"
        raise UserError(f"config file {problem}; {config_hint(task)}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=ConfigLoader)
    except yaml.MarkedYAMLError as err:  # where in the file, rather than PyYAML's excerpt of it
        mark = err.problem_mark or err.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        reason = " ".join(str(err.problem or err.context or type(err).__name__).split())
        raise UserError(f"config file {path} is not valid YAML: {reason}{where}") from None
    except (yaml.YAMLError, UnicodeDecodeError, *YAML_BUILD_ERRORS) as err:
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise UserError(f"config file {path} is not valid YAML: {reason}") from None
    if repeated_values(data) > MAX_REPEATED_VALUES:
        raise UserError(
            f"config file {path}: its aliases (*name) repeat more than {MAX_REPEATED_VALUES:,} "
            "values, as a 'billion laughs' file does; write the values out"
        )
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file {path} must hold a mapping of sections, not {type(data).__name__}"
        )
    return data


CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the repository's, one folder a task


def config_hint(task: str) -> str:
    """What to pass as --config for ``task``: a file like those of the repository's
    ``configs/<task>/``, which it names (from another folder, by its absolute path)."""
    folder = CONFIGS / task
    names = sorted(path.name for path in folder.glob("*.yaml"))
    if not names:  # an installed copy, without the repository's folders
        return f"pass --config configs/{task}/<name>.yaml"
    try:
        shown = os.path.relpath(folder)
    except OSError:  # a working folder that was removed
        shown = ".."
    shown = str(folder) if shown.startswith("..") else shown
    return f"pass --config {shown}/<name>.yaml ({shown} holds {', '.join(names)})"


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    bounds: Mapping[str, str] | None = None,
    *,
    saved: T | None = None,
) -> T:
    """Defaults of ``cls``, updated by the YAML at ``path``, then by ``--set`` overrides;
    ``saved`` (a checkpoint's config, read) stands in for the defaults and the file.

    The file's values that no override replaces are checked first (their types, and
    ``bounds``, the task's table for `check_bounds`, when given), so that an error in the file
    names the file; the overrides' errors name the key. The returned config's bounds are the
    task's `check_config`'s to check.
    """
    parsed = [parse_override(item) for item in overrides]
    defaults = to_dict(cls())
    data = to_dict(cls() if saved is None else saved)
    overridden = [key for key, _ in parsed]
    if path is not None:
        try:
            _deep_update(data, read_yaml(path, task=cls.__module__.split(".")[0]), cls)
            kept = _with_values_of(data, defaults, overridden)  # the file's values that stay
            in_file = from_dict(cls, kept)
            if bounds is not None:
                check_bounds(in_file, bounds)
        except UserError as err:
            if str(path) in str(err):
                raise
            raise UserError(f"config file {path}: {err}") from None
    apply_overrides(data, parsed)
    return from_dict(cls, data)


def _with_values_of(
    data: dict[str, Any], source: Mapping[str, Any], keys: Iterable[str]
) -> dict[str, Any]:
    """A copy of nested ``data`` with the dotted ``keys`` set to their values in ``source``
    (keys that ``source`` lacks are left to `apply_overrides` to refuse)."""
    copy = {name: dict(value) if isinstance(value, dict) else value for name, value in data.items()}
    for key in keys:
        section, _, name = key.partition(".")
        if isinstance(copy.get(section), dict) and isinstance(source.get(section), Mapping):
            if name in source[section]:
                copy[section][name] = source[section][name]
    return copy


def _deep_update(
    base: dict[str, Any], update: Mapping[str, Any], cls: Any, prefix: str = ""
) -> None:
    hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    for key, value in update.items():
        if key not in base:
            raise unknown_key(prefix + str(key), [prefix + k for k in base])
        sub = hints.get(key)
        if value is None and dataclasses.is_dataclass(sub):
            continue  # a section whose keys are all commented out keeps its defaults
        if (
            isinstance(value, Mapping)
            and isinstance(base[key], dict)
            and dataclasses.is_dataclass(sub)
        ):
            _deep_update(base[key], value, sub, prefix=f"{prefix}{key}.")
        else:
            base[key] = value


def add_config_arguments(
    parser: argparse.ArgumentParser, example: str, *, either: Any | None = None
) -> None:
    """--config and --set, as every command that reads a task config takes them; --config goes
    into ``either`` (a required mutually exclusive group) where another option may stand in for
    it."""
    if either is None:
        parser.add_argument("--config", required=True, help=f"YAML config, e.g. {example}")
    else:
        either.add_argument("--config", help=f"YAML config, e.g. {example}")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set model.cell=gru train.lr=3e-4 train.max_steps=1_000 "
        "(repeatable; values are read as in the YAML file; unknown keys and bad types are errors)",
    )


def add_run_arguments(parser: argparse.ArgumentParser, task: str, example: str) -> None:
    """The options every training CLI shares: --config, --set, --out-dir, --resume, --overwrite."""
    add_config_arguments(parser, example)
    parser.add_argument(
        "--out-dir", help=f"where best.pt and last.pt go (default: runs/{task}/<config name>)"
    )
    # --resume goes on with the run in --out-dir, --overwrite replaces it: never both
    either = parser.add_mutually_exclusive_group()
    either.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        choices=["auto"],
        help="continue the run in --out-dir from its last.pt; `--resume auto`: continue it if "
        "it has one, else start a run (the same command for a job's start and its restarts)",
    )
    either.add_argument(
        "--overwrite", action="store_true", help="replace a run already in --out-dir"
    )
    parser.add_argument(
        "--init-from",
        metavar="PATH",
        help="start a new run from the weights of this checkpoint (same network and vocabulary; "
        "optimizer, step and schedule start afresh; not read with --resume)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of a task's ``train`` that `add_run_arguments`' options set."""
    return {
        "resume": args.resume,
        "overwrite": args.overwrite,
        "quiet": args.quiet,
        "init_from": args.init_from,
    }


def run_dir(task: str, config_path: str, out_dir: str | None) -> Path:
    """--out-dir, or runs/<task>/<config file name without .yaml>."""
    return Path(out_dir) if out_dir else Path("runs") / task / Path(config_path).stem


# --- bounds ------------------------------------------------------------------------------------

_BOUND = r"[-+]?(?:inf|[0-9][0-9_]*(?:\.[0-9]*)?(?:e[-+]?[0-9]+)?)"
_INTERVAL_RE = re.compile(rf"([\[(])\s*({_BOUND})\s*,\s*({_BOUND})\s*([\])])")


@dataclasses.dataclass(frozen=True)
class Interval:
    """An interval in the usual notation: ``"(0, 10]"`` holds 0 < x <= 10.

    A bound may be ``inf`` or ``-inf``; an open end at infinity keeps values finite
    (``"[0, inf)"``: any finite x >= 0), a closed one lets infinity in. NaN is in no interval.
    """

    text: str
    low: float
    high: float
    low_open: bool
    high_open: bool

    @classmethod
    def parse(cls, text: str) -> Interval:
        match = _INTERVAL_RE.fullmatch(text.strip())
        if not match:
            raise ValueError(f"not an interval like '(0, 10]' or '[1, 1e9]': {text!r}")
        left, low, high, right = match.groups()
        return cls(
            f"{left}{low}, {high}{right}", float(low), float(high), left == "(", right == ")"
        )

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


def _is_number_type(tp: Any) -> bool:
    """int, float, or either of them or None (``float | None``)."""
    if tp in (int, float):
        return True
    args = [arg for arg in typing.get_args(tp) if arg is not type(None)]
    is_union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    return is_union and bool(args) and all(arg in (int, float) for arg in args)


def number_keys(cls: type) -> list[str]:
    """The dotted keys of every int and float field of a (nested) config dataclass."""
    keys = []
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += [f"{name}.{key}" for key in number_keys(tp)]
        elif _is_number_type(tp):
            keys.append(name)
    return keys


def check_bounds(config: Any, bounds: Mapping[str, str]) -> None:
    """Numbers the types allow but no run can use are a UserError naming the dotted key.

    ``bounds`` maps a dotted key to the interval its value must lie in, e.g.
    ``{"train.lr": "(0, 10]", "model.dropout": "[0, 1)", "data.batch_size": "[1, 65536]"}``; a task
    keeps one such table next to its config dataclass. A float field the table does not name must
    still be finite. ``None`` (an optional field left unset) is not checked.
    """
    keys = number_keys(type(config))
    unknown = sorted(set(bounds) - set(keys))
    if unknown:
        raise KeyError(f"bounds given for keys that are not number fields: {unknown}")
    for key in keys:
        value = functools.reduce(getattr, key.split("."), config)
        if value is None:
            continue
        interval = Interval.parse(bounds.get(key, "(-inf, inf)"))
        if value not in interval:
            rule = f"be in {interval.text}" if key in bounds else "be finite"
            if key in bounds and isinstance(value, float) and not math.isfinite(value):
                rule = f"be a finite number in {interval.text}"
            raise UserError(f"config key {shown(key)} must {rule}, got {shown(value)}")
