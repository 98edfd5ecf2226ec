"""Loading settings: pyproject.toml's ``[tool.ukl-build]``, then ``-C`` overrides.

:func:`load_settings` is the one reader of raw dicts.  Each value is checked
against its field's type and converted (``-C`` values arrive as strings);
unknown keys and wrong types are errors naming the file or ``-C`` and the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from ukl_build.errors import ConfigError
from ukl_build.project import load_project
from ukl_build.settings.model import TOP_LEVEL_ONLY, Origins, Settings, toml_key
from ukl_build.settings.validate import validate


def load_settings(
    project_dir: Path, config_settings: Mapping[str, Any] | None = None,
    own_metadata: bool = True,
) -> Settings:
    """Read ``project_dir/pyproject.toml`` and apply ``-C`` overrides.

    ``own_metadata=False`` (the setuptools plugin): setuptools writes the core
    metadata from ``[project]``; ukl-build reads only the name and version.
    """
    project_dir = project_dir.resolve()
    pyproject = project_dir / "pyproject.toml"
    try:
        with open(pyproject, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{pyproject}: not found", hint="run ukl-build on a project directory") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{pyproject}: invalid TOML: {e}") from None

    project = load_project(data.get("project"), pyproject, own_metadata)
    raw = data.get("tool", {}).get("ukl-build")
    if raw is None:
        raise ConfigError(f"{pyproject}: no [tool.ukl-build] table", hint="see docs/configuration.md")
    if not isinstance(raw, dict):
        raise ConfigError(f"{pyproject}: [tool.ukl-build] must be a table")
    overrides = dict(config_settings or {})
    origin = Origins(str(pyproject), frozenset(k for k in overrides if not _frontend_key(k)))
    raw = _apply_overrides(raw, overrides)

    values = _convert_table(raw, Settings, origin, "", skip=TOP_LEVEL_ONLY)
    settings = Settings(
        project_dir=project_dir,
        project=project,
        origin=origin,
        **values,
    )
    validate(settings, origin)
    return settings


def _frontend_key(key: str) -> bool:
    return key.startswith("build.") or key in ("--build-option", "--global-option")


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge PEP 517 config settings (dotted keys) into a copy of the raw table.

    Values arrive as strings: lists are split on ``;`` and kernel source keys
    replace the project's source choice rather than add to it.
    """
    out = _deepcopy(raw)
    kernel_source_keys = {"source", "url", "path", "git", "sha256"}
    touched_source = any(
        k.replace("-", "_").split(".")[:2][-1] in kernel_source_keys
        for k in overrides
        if k.startswith("kernel.")
    )
    if touched_source and isinstance(out.get("kernel"), dict):
        for k in kernel_source_keys:
            out["kernel"].pop(k, None)
    for key, value in overrides.items():
        if _frontend_key(key):
            continue  # frontend-specific settings meant for other tools
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"config setting -C {key}: {p} is not a table")
            node = nxt
        node[parts[-1]] = _FromCli(value) if isinstance(value, str) else value
    return out


class _FromCli(str):
    """A value from a -C config setting: a string that may spell a list, bool or int."""


def _deepcopy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def _convert_table(
    raw: dict[str, Any], cls: type, origin: Origins, table: str,
    skip: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Convert one table; ``table`` is its dotted key below [tool.ukl-build] ("" for the top)."""
    hints = typing.get_type_hints(cls)
    fields = {toml_key(f.name): f for f in dataclasses.fields(cls) if f.name not in skip}
    out: dict[str, Any] = {}
    prefix = f"{table}." if table else ""
    for key, value in raw.items():
        f = fields.get(key) or fields.get(toml_key(key))
        if f is None:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{origin.table_of(prefix + toml_key(key))} unknown key {key!r}",
                              hint=f"known keys: {known}")
        out[f.name] = _convert(value, hints[f.name], origin, prefix + toml_key(f.name))
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in skip and f.name not in out:
            raise ConfigError(f"{origin.table_of(prefix + toml_key(f.name))} required key "
                              f"{toml_key(f.name)!r} missing")
    return out


def _convert(value: Any, tp: Any, origin: Origins, key: str) -> Any:
    """Check ``value`` against the field type ``tp`` and convert it (CLI strings too)."""
    origin_tp = typing.get_origin(tp)
    if origin_tp in (typing.Union, types.UnionType):  # Optional[X]: X
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(value, args[0], origin, key)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _to_table(value, tp, origin, key)
    converter = _CONVERTERS.get(origin_tp or tp)
    if converter is None:
        raise TypeError(f"unsupported settings type {tp!r}")  # pragma: no cover
    return converter(value, tp, origin, key)


def _to_table(value: Any, tp: Any, origin: Origins, key: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{origin(key)}: expected a table, got {value!r}")
    return tp(**_convert_table(value, tp, origin, key))


def _to_choice(value: Any, tp: Any, origin: Origins, key: str) -> str:
    choices = typing.get_args(tp)
    if value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{origin(key)}: must be one of {opts}, got {value!r}")
    return str(value)


def _to_list(value: Any, tp: Any, origin: Origins, key: str) -> list[Any]:
    if isinstance(value, _FromCli):  # "a;b;c"
        value = [v for v in value.split(";") if v]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{origin(key)}: expected a list of strings, got {value!r}")
    (item_tp,) = typing.get_args(tp)
    return [_convert(v, item_tp, origin, key) for v in value]


def _to_dict(value: Any, tp: Any, origin: Origins, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{origin(key)}: expected a table, got {value!r}")
    item = typing.get_args(tp)[1]
    if isinstance(item, type) and dataclasses.is_dataclass(item):  # a table of tables
        return {str(k): _convert(v, item, origin, f"{key}.{k}") for k, v in value.items()}
    return {str(k): _kconfig_value(v, origin(f"{key}.{k}")) for k, v in value.items()}


def _to_bool(value: Any, tp: Any, origin: Origins, key: str) -> bool:
    if isinstance(value, _FromCli) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    if not isinstance(value, bool):
        raise ConfigError(f"{origin(key)}: expected true or false, got {value!r}")
    return value


def _to_int(value: Any, tp: Any, origin: Origins, key: str) -> int:
    if isinstance(value, _FromCli) and value.strip().isdigit():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{origin(key)}: expected an integer, got {value!r}")
    return value


def _to_str(value: Any, tp: Any, origin: Origins, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{origin(key)}: expected a string, got {value!r}")
    return str(value)


# The converter for each field type (a generic's origin, or the type itself).
_CONVERTERS: dict[Any, Callable[[Any, Any, Origins, str], Any]] = {
    Literal: _to_choice, list: _to_list, dict: _to_dict, bool: _to_bool, int: _to_int,
    str: _to_str,
}


def _kconfig_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "y" if value else "n"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected a string, integer or boolean, got {value!r}")


