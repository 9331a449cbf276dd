"""An option declared once: a dataclass field that carries its help text (and, for the command line, its flag).

    @dataclass
    class SFTOptions:
        lr: float = option(1e-4, "learning rate")
        load_in_4bit: bool = option(False, "QLoRA: a 4-bit nf4 base", flag="--4bit/--no-4bit")

That one line is the default, the YAML key (`dnfbot.train.options`), the `--help` text and the flag
(`dnfbot.cli.options`): adding an option is adding a field. `build(cls, values, where)` makes an instance from
YAML or flag values, and names the key and the file for anything unknown or of the wrong type.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dnfbot.errors import InputError

REQUIRED = dataclasses.MISSING


def option(
    default: Any = REQUIRED,
    help: str = "",
    *,
    flag: str | tuple[str, ...] | None = None,
    parse: Callable[[str], Any] | None = None,
    cli: bool = True,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with its documentation.

    flag: the flag(s) when not `--field-name` (bools: `--name/--no-name`); parse: turns the flag's text into the
    value (for lists); cli=False: settable in a config file only (e.g. trust_remote_code)."""
    meta = {"help": help, "flag": (flag,) if isinstance(flag, str) else flag, "parse": parse, "cli": cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def comma_list(text: str) -> list[str] | str:
    """'a, b' → ['a', 'b']; 'all-linear' (PEFT's shortcut for every linear layer) stays a string."""
    if text == "all-linear":
        return text
    return [v.strip() for v in text.split(",") if v.strip()]


@dataclasses.dataclass(frozen=True)
class Declared:
    """One declared option, with its annotation resolved to a type."""

    name: str
    type: Any
    default: Any  # REQUIRED when the field has none
    help: str
    flags: tuple[str, ...] | None
    parse: Callable[[str], Any] | None
    cli: bool
    owner: type  # the class that declares it (a base class for shared options)


@functools.cache
def declared(cls: type) -> tuple[Declared, ...]:
    """The fields of a dataclass as options, in declaration order (base classes' fields first)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not REQUIRED:
            default = f.default
        elif f.default_factory is not REQUIRED:
            default = f.default_factory()
        else:
            default = REQUIRED
        owner = next(c for c in cls.__mro__ if f.name in inspect.get_annotations(c))
        m = f.metadata
        out.append(
            Declared(
                f.name,
                hints[f.name],
                default,
                m.get("help", ""),
                m.get("flags") or m.get("flag"),
                m.get("parse"),
                m.get("cli", True),
                owner,
            )
        )
    return tuple(out)


def flag_decls(d: Declared) -> tuple[str, ...]:
    """The option's flag(s): declared, else --field-name (bools: --field-name/--no-field-name)."""
    if d.flags:
        return d.flags
    flag = "--" + d.name.replace("_", "-")
    return (f"{flag}/--no-{flag[2:]}",) if _base_type(d.type) is bool else (flag,)


def command_line(prefix: str, obj: Any) -> str:
    """`prefix` followed by the flags that reproduce `obj`'s non-default options (for reports)."""
    parts = [prefix]
    for d in declared(type(obj)):
        value = getattr(obj, d.name)
        if not d.cli or value == d.default:
            continue
        on, _, off = flag_decls(d)[0].partition("/")
        if isinstance(value, bool):
            parts.append(on if value else off)
        elif isinstance(value, list) and d.parse is not None:
            parts.append(f"{on} {','.join(map(str, value))}")
        elif isinstance(value, list):
            parts += [f"{on} {v}" for v in value]
        elif value is not None:
            parts.append(f"{on} {value}")
    return " ".join(parts)


def _base_type(tp: Any) -> Any:
    """`X | None` → X (the first non-None member of a union), else the type itself."""
    options = _union(tp)
    return next((o for o in options if o is not type(None)), tp) if options else tp


def names(cls: type) -> set[str]:
    return {d.name for d in declared(cls)}


def build(cls: type, values: dict[str, Any], where: str = "options", prefix: str = "") -> Any:
    """`cls(**values)`, each value checked against its declaration; then `validate()` when the class has one.

    where: the file (or 'flags') the values come from; prefix: their YAML section ('sft.'), for messages."""
    known = {d.name: d for d in declared(cls)}
    for key in values:
        if key not in known:
            raise InputError(f"{where}: unknown option '{prefix}{key}' (known: {', '.join(sorted(known))})")
    checked = {k: coerce(v, known[k].type, f"{where}: '{prefix}{k}'") for k, v in values.items()}
    missing = [d.name for d in known.values() if d.default is REQUIRED and d.name not in checked]
    if missing:
        raise InputError(f"{where}: '{prefix}{missing[0]}' is required")
    obj = cls(**checked)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def as_dict(obj: Any) -> dict[str, Any]:
    """The options as plain JSON/YAML values (paths as strings), for run summaries."""
    return {d.name: str(v) if isinstance(v := getattr(obj, d.name), Path) else v for d in declared(type(obj))}


# --- value checks --------------------------------------------------------------------------------------------


def coerce(value: Any, tp: Any, what: str) -> Any:
    """`value` as type `tp`, or an InputError saying what was expected. YAML 1.1 reads '1e-4' as a string:
    numeric strings are numbers where a number is expected."""
    if tp is Any or tp is object:
        return value
    options = _union(tp)
    if options is not None:
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in (o for o in options if o is not type(None)):
            try:
                return coerce(value, opt, what)
            except InputError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else InputError(f"{what}: {value!r} is not a valid value")
    origin = typing.get_origin(tp) or tp
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"{what}: expected true or false, got {value!r}")
    if origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InputError(f"{what}: expected a whole number, got {value!r}")
    if origin is float:
        number = _number(value)
        if number is None:
            raise InputError(f"{what}: expected a number, got {value!r}")
        return number
    if origin is str:
        if isinstance(value, str):
            return value
        raise InputError(f"{what}: expected text, got {value!r}")
    if origin is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise InputError(f"{what}: expected a path, got {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise InputError(f"{what}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [coerce(v, item, what) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{what}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _union(tp: Any) -> tuple | None:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return typing.get_args(tp)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None
