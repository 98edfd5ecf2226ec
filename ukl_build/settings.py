"""Settings: ``[tool.ukl-build]`` from pyproject.toml, overridden by ``-C`` config settings.

The model is a tree of frozen dataclasses, one per table, every field with a
default and a docstring-like ``doc`` in its metadata (``docs/configuration.md``
is generated from them by ``python -m ukl_build schema --markdown``).  One
function, :func:`load_settings`, merges the sources; nothing else reads raw
dicts.  Unknown keys and wrong types are errors naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ukl_build.errors import ConfigError
from ukl_build.project import Project, load_project
from ukl_build.runner import (
    HOST_CLOCK_PLACEHOLDER,
    Accel,
    Machine,
    RunError,
    RunOptions,
    check_app_args,
    kernel_cmdline,
    split_forward,
)

# Fixed choices are types: the converter checks membership, so _validate
# keeps only the rules that span fields.
Mode = Literal["ukl", "user"]
Libc = Literal["nolibc", "glibc", "musl"]
Format = Literal["bzimage", "pvh"]
SourceKind = Literal["debian", "url", "path", "git"]
_KCONFIG_NAME = re.compile(r"^[A-Z0-9_]+$")
_MEMORY = re.compile(r"^[1-9][0-9]*[KMGT]?$", re.IGNORECASE)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class GitSettings:
    url: str = _doc("Repository URL or local path, anything `git fetch` accepts.")
    rev: str = _doc("Commit, tag or branch to build; a full commit id pins it.")


@dataclass(frozen=True)
class KernelSettings:
    version: str = _doc("Kernel series (VERSION.PATCHLEVEL); picks the patch series.", default="6.1")
    source: SourceKind = _doc(
        'Where the tree comes from: "debian" (Debian\'s linux-source-<version> package, '
        'offline), "url", "path" or "git". Inferred from the key you set.',
        default="debian",
    )
    url: str | None = _doc("Tarball URL (http, https or file); needs `sha256`.", default=None)
    sha256: str | None = _doc(
        "Expected sha256 of the tarball: mandatory with `url`, checked for `path`.", default=None
    )
    path: str | None = _doc(
        "Local tarball or directory, relative to the project.", default=None
    )
    git: GitSettings | None = _doc("Git repository and revision.", default=None)

    @property
    def kind(self) -> str:
        """Which of the source kinds is in use."""
        for name in ("url", "path", "git"):
            if getattr(self, name) is not None:
                return name
        return self.source


@dataclass(frozen=True)
class AppSourceSettings:
    url: str | None = _doc("Source archive URL (http, https or file); needs `sha256`.", default=None)
    sha256: str | None = _doc(
        "Expected sha256 of the archive: mandatory with `url`, checked for a `path` tarball.",
        default=None)
    path: str | None = _doc("Local tarball or directory, relative to the project.", default=None)
    git: GitSettings | None = _doc("Git repository and revision.", default=None)
    debian: str | None = _doc(
        "A Debian source package (e.g. \"redis\"): its upstream tarball, as apt verifies it "
        "against Debian's signed index; needs deb-src entries (scripts/setup.sh adds them).",
        default=None)


_APP_SOURCE_KINDS = ("url", "path", "git", "debian")
_SOURCE_DOC = ("The app's source tree, fetched and verified like the kernel's (url + sha256, "
               "path, git or debian) instead of the project directory; paths below are "
               "relative to it.")


_DEPS_PLACEHOLDER = ("`{deps.NAME}` in an argument stands for the install prefix of "
                     "dependency NAME (its include/ and lib/).")


@dataclass(frozen=True)
class MakeSettings:
    dir: str = _doc("Directory to run make in, relative to the project (or `source`).", default=".")
    output: str = _doc("The executable make produces, relative to `dir`.", default="app")
    args: list[str] = _doc("Extra make arguments (targets, variables). " + _DEPS_PLACEHOLDER,
                           default_factory=list)
    configure: list[str] | None = _doc(
        "Run `./configure` in `dir` with these arguments before the first make (autotools "
        "projects); its checks link and run test programs against the user-mode build of "
        "the same libc, make then compiles with the mode's flags. " + _DEPS_PLACEHOLDER,
        default=None)
    source: AppSourceSettings | None = _doc(_SOURCE_DOC, default=None)


@dataclass(frozen=True)
class DepSettings:
    source: AppSourceSettings = _doc(
        "Where the library's source comes from (url + sha256, path, git or debian).")
    configure: list[str] = _doc(
        "Arguments for its `./configure`, besides the prefix and the compiler and flags "
        "ukl-build passes (e.g. --disable-shared). " + _DEPS_PLACEHOLDER,
        default_factory=list)
    make_args: list[str] = _doc("Extra arguments for its `make` and `make install`.",
                                default_factory=list)


@dataclass(frozen=True)
class CMakeSettings:
    source_dir: str = _doc("CMake source directory, relative to the project (or `source`).",
                           default=".")
    target: str = _doc("The executable target to build.", default="app")
    args: list[str] = _doc("Extra `-D...` arguments for configure.", default_factory=list)
    source: AppSourceSettings | None = _doc(_SOURCE_DOC, default=None)


@dataclass(frozen=True)
class RunSettings:
    machine: Machine = _doc('QEMU machine: "microvm" or "q35".', default=RunOptions.machine)
    memory: str = _doc("Guest memory, QEMU syntax (256M, 1G).", default=RunOptions.memory)
    smp: int = _doc("Virtual CPUs.", default=RunOptions.smp)
    accel: Accel = _doc('"tcg", "kvm" or "auto" (probes KVM first).', default=RunOptions.accel)
    forward: list[str] = _doc(
        'Port forwards "HOST:GUEST" (TCP, user-mode networking).', default_factory=list
    )


@dataclass(frozen=True)
class Origins:
    """Where a settings key came from, for error messages: pyproject.toml or ``-C``."""

    pyproject: str
    overridden: frozenset[str]  # dotted keys given with -C

    def __call__(self, key: str) -> str:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.overridden:
                return f"config setting -C {'.'.join(parts[:n])}"
        table = ".".join(["tool.ukl-build", *parts[:-1]])
        return f"{self.pyproject}: [{table}] {parts[-1]}"

    def table_of(self, key: str) -> str:
        """Where the table holding ``key`` came from (for keys that are missing or unknown)."""
        where = self(key)
        if where.startswith("config setting"):
            return f"{where}:"
        table = key.rsplit(".", 1)[0] if "." in key else ""
        given = sorted(k for k in self.overridden if table and k.startswith(table + "."))
        if given:  # the table was made by -C keys beside this one
            return f"config setting -C {given[0]}: [tool.ukl-build.{table}]"
        return where.rsplit(" ", 1)[0]


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    project: Project  # [project]: name, version, core metadata
    origin: Origins  # where each key came from, for errors found later in the build
    mode: Mode = _doc(
        '"ukl": the app is linked into vmlinux and runs in ring 0, its system calls are '
        'function calls; "user": the app is a static /init in a built-in initramfs (the '
        "fallback, and the baseline for speed).",
        default="ukl",
    )
    libc: Libc = _doc(
        '"nolibc" (the fetched tree\'s tools/include/nolibc + ukl-build runtime), '
        '"musl" (built from `[tool.ukl-build.musl]`, static; in UKL mode patched so that its '
        'system calls are calls into the kernel) or '
        '"glibc" (the host\'s, static, user mode only).',
        default="nolibc",
    )
    shortcuts: bool = _doc(
        "UKL mode: the app calls the kernel's direct entry points for getppid, read, write, "
        "send and recv (on a socket straight to the protocol, skipping the file layer) "
        "instead of the generic system call bridge. No effect in user mode.",
        default=False,
    )
    sources: list[str] = _doc("C sources of the app, relative to the project.", default_factory=list)
    make: MakeSettings | None = _doc("Build the app with make instead.", default=None)
    cmake: CMakeSettings | None = _doc("Build the app with CMake + Ninja instead.", default=None)
    cflags: list[str] = _doc("Extra compiler flags for the app.", default_factory=list)
    deps: dict[str, DepSettings] = _doc(
        "Libraries the app links, each built from source before the app with the same "
        "toolchain and libc (`[tool.ukl-build.deps.NAME]`, in the order given; autotools: "
        "configure, make, make install) and cached; the app's build gets -I and -L for "
        "each. Needs libc musl or glibc.",
        default_factory=dict)
    recipes: list[str] = _doc(
        "Kernel config fragments on top of `base`: names from ukl-build's recipes/ or "
        "paths (*.config) relative to the project.",
        default_factory=lambda: ["microvm"],
    )
    kconfig: dict[str, str] = _doc(
        'Extra kernel options, e.g. { HZ_100 = "y" }; each must survive olddefconfig.',
        default_factory=dict,
    )
    cmdline: str = _doc("Kernel command line for the app.", default="quiet")
    args: list[str] = _doc("The app's argv[1:].", default_factory=list)
    formats: list[Format] = _doc(
        'Images to produce: "bzimage" (QEMU -kernel, bootloaders), "pvh" (ELF vmlinux '
        "for QEMU/Firecracker/cloud-hypervisor direct boot).",
        default_factory=lambda: ["bzimage"],
    )
    kernel: KernelSettings = _doc("The kernel source.", default_factory=KernelSettings)
    musl: AppSourceSettings = _doc(
        'Where musl comes from for libc = "musl" (same keys as a make source); '
        "default: Debian's musl source package.",
        default_factory=lambda: AppSourceSettings(debian="musl"))
    run: RunSettings = _doc("Defaults for `ukl_build run` and the launcher.", default_factory=RunSettings)

    @property
    def uses_shortcuts(self) -> bool:
        """Whether the app is built to call the kernel's shortcut entry points (UKL mode only)."""
        return self.mode == "ukl" and self.shortcuts

    def kconfig_items(self) -> list[tuple[str, str]]:
        return sorted(self.kconfig.items())


# ---------------------------------------------------------------------------
# loading

_TOP_LEVEL_ONLY = frozenset({"project_dir", "project", "origin"})


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
    origin = Origins(str(pyproject), frozenset(
        _key(k) for k in overrides if not _frontend_key(k)))
    raw = _apply_overrides(raw, overrides)

    values = _convert_table(raw, Settings, origin, "", skip=_TOP_LEVEL_ONLY)
    settings = Settings(
        project_dir=project_dir,
        project=project,
        origin=origin,
        **values,
    )
    _validate(settings, origin)
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


def _key(name: str) -> str:
    return name.replace("_", "-")


def _convert_table(
    raw: dict[str, Any], cls: type, origin: Origins, table: str,
    skip: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Convert one table; ``table`` is its dotted key below [tool.ukl-build] ("" for the top)."""
    hints = typing.get_type_hints(cls)
    fields = {_key(f.name): f for f in dataclasses.fields(cls) if f.name not in skip}
    out: dict[str, Any] = {}
    prefix = f"{table}." if table else ""
    for key, value in raw.items():
        f = fields.get(key) or fields.get(_key(key))
        if f is None:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{origin.table_of(prefix + _key(key))} unknown key {key!r}",
                              hint=f"known keys: {known}")
        out[f.name] = _convert(value, hints[f.name], origin, prefix + _key(f.name))
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in skip and f.name not in out:
            raise ConfigError(f"{origin.table_of(prefix + _key(f.name))} required key "
                              f"{_key(f.name)!r} missing")
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


def _inside(project_dir: Path, rel: str, where: str, fetched: bool = False) -> None:
    """App inputs must live in the project (the sdist carries only the project), or in
    the fetched source tree."""
    path = (project_dir / rel).resolve()
    if path != project_dir and project_dir not in path.parents:
        if fetched:
            raise ConfigError(f"{where}: {rel!r} leaves the fetched source tree")
        raise ConfigError(f"{where}: {rel!r} is outside the project ({path}); an sdist "
                          "would not carry it", hint="move it into the project directory")


def _validate(s: Settings, origin: Origins) -> None:
    if s.mode == "ukl" and s.libc == "glibc":
        raise ConfigError(f"{origin('libc')}: mode 'ukl' needs 'nolibc' or 'musl' "
                          "(the host's glibc issues system calls ring 0 cannot make)")
    if s.libc == "musl":
        _validate_app_source(s.musl, "musl", origin)
    if not s.formats:
        raise ConfigError(f"{origin('formats')}: name at least one format")
    build_kinds = [k for k in ("sources", "make", "cmake") if getattr(s, k)]
    if len(build_kinds) != 1:
        raise ConfigError(
            f"{origin(build_kinds[-1] if build_kinds else 'sources')}: set exactly one of "
            f"sources, make, cmake (got {build_kinds or 'none'})"
        )
    for src in s.sources:
        _inside(s.project_dir, src, origin("sources"))
    for table, sub in (("make", "dir"), ("cmake", "source-dir")):
        build_settings = getattr(s, table)
        if build_settings is None:
            continue
        rel = getattr(build_settings, sub.replace("-", "_"))
        if build_settings.source is None:
            _inside(s.project_dir, rel, origin(f"{table}.{sub}"))
        else:  # relative to the fetched tree, which must not be left
            _inside(Path("/source"), rel, origin(f"{table}.{sub}"), fetched=True)
            _validate_app_source(build_settings.source, f"{table}.source", origin)
    _validate_deps(s, origin)
    for recipe in s.recipes:
        if recipe.endswith(".config"):
            _inside(s.project_dir, recipe, origin("recipes"))
    _validate_kconfig(s, origin)
    _validate_kernel(s.kernel, origin)
    _validate_run(s, origin)


def _validate_kconfig(s: Settings, origin: Origins) -> None:
    for name, value in s.kconfig.items():
        where = origin(f"kconfig.{name}")
        bare = name.removeprefix("CONFIG_")
        if not _KCONFIG_NAME.match(bare):
            raise ConfigError(f"{where}: {name!r} is not a kernel option name")
        if value == "m":
            raise ConfigError(f"{where}: modules are not supported (the kernel has no "
                              'module loader); use "y"')
        if bare.startswith("INITRAMFS_COMPRESSION_") and bare != "INITRAMFS_COMPRESSION_NONE":
            raise ConfigError(f"{where}: the built-in initramfs stays uncompressed (the whole "
                              "image is compressed already, and the build checks the app in it)")


def _validate_kernel(k: KernelSettings, origin: Origins) -> None:
    chosen = [n for n in ("url", "path", "git") if getattr(k, n) is not None]
    if len(chosen) > 1:
        raise ConfigError(f"{origin('kernel.' + chosen[-1])}: set only one of url, path, git "
                          f"(got {', '.join(chosen)})")
    kind = k.kind
    if kind != k.source and k.source != "debian":
        raise ConfigError(f"{origin('kernel.source')}: {k.source!r} contradicts the {kind} key")
    if kind in ("url", "path", "git") and not chosen:
        raise ConfigError(f"{origin('kernel.source')}: {kind!r} needs the {kind} key")
    if k.sha256 is not None and not _SHA256.match(k.sha256.lower()):
        raise ConfigError(f"{origin('kernel.sha256')}: expected 64 hex digits, got {k.sha256!r}")
    if kind == "url" and not k.sha256:
        raise ConfigError(f"{origin('kernel.sha256')}: required with url "
                          "(a download is only used once verified)")
    if not re.match(r"^\d+\.\d+$", k.version):
        raise ConfigError(f"{origin('kernel.version')}: expected e.g. \"6.1\", got {k.version!r}")
    if k.git is not None and not k.git.rev.strip():
        raise ConfigError(f"{origin('kernel.git.rev')}: must name a commit, tag or branch")


def _validate_app_source(src: AppSourceSettings, key: str, origin: Origins) -> None:
    chosen = [n for n in _APP_SOURCE_KINDS if getattr(src, n) is not None]
    if len(chosen) != 1:
        raise ConfigError(f"{origin(key)}: set exactly one of {', '.join(_APP_SOURCE_KINDS)} "
                          f"(got {chosen or 'none'})")
    if src.sha256 is not None and not _SHA256.match(src.sha256.lower()):
        raise ConfigError(f"{origin(key + '.sha256')}: expected 64 hex digits, got {src.sha256!r}")
    if src.url is not None and not src.sha256:
        raise ConfigError(f"{origin(key + '.sha256')}: required with url "
                          "(a download is only used once verified)")
    if src.git is not None and not src.git.rev.strip():
        raise ConfigError(f"{origin(key + '.git.rev')}: must name a commit, tag or branch")


_DEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_DEPS_REF = re.compile(r"\{deps\.([^{}]*)\}")


def deps_references(arg: str) -> list[str]:
    """The dependency names an argument refers to as ``{deps.NAME}``."""
    return _DEPS_REF.findall(arg)


def substitute_deps(arg: str, prefixes: Mapping[str, Path]) -> str:
    """``arg`` with each ``{deps.NAME}`` replaced by that dependency's install prefix."""
    return _DEPS_REF.sub(lambda m: str(prefixes[m.group(1)]), arg)


def _validate_deps(s: Settings, origin: Origins) -> None:
    configure = s.make.configure if s.make is not None else None
    if (s.deps or configure is not None) and s.libc not in ("musl", "glibc"):
        key = f"deps.{next(iter(s.deps))}" if s.deps else "make.configure"
        raise ConfigError(f"{origin(key)}: configure scripts link and run test programs, "
                          f"which libc {s.libc!r} cannot give them", hint='libc = "musl"')
    checked: list[tuple[str, list[str], set[str]]] = []
    earlier: set[str] = set()
    for name, dep in s.deps.items():
        if not _DEP_NAME.match(name):
            raise ConfigError(f"{origin(f'deps.{name}')}: {name!r} is not a usable dependency "
                              "name (letters, digits, '_', '.', '+', '-')")
        _validate_app_source(dep.source, f"deps.{name}.source", origin)
        checked.append((f"deps.{name}.configure", dep.configure, set(earlier)))
        checked.append((f"deps.{name}.make-args", dep.make_args, set(earlier)))
        earlier.add(name)
    if s.make is not None:
        checked.append(("make.args", s.make.args, earlier))
        checked.append(("make.configure", configure or [], earlier))
    for key, args, known in checked:
        for arg in args:
            for ref in deps_references(arg):
                if ref not in known:
                    raise ConfigError(f"{origin(key)}: {arg!r} names {{deps.{ref}}}, which is not "
                                      "a dependency built before it",
                                      hint=f"known here: {', '.join(sorted(known)) or 'none'}")


def _validate_run(s: Settings, origin: Origins) -> None:
    r = s.run
    if not _MEMORY.match(r.memory):
        raise ConfigError(f"{origin('run.memory')}: expected a size such as 256M or 1G, "
                          f"got {r.memory!r}")
    if r.smp < 1:
        raise ConfigError(f"{origin('run.smp')}: expected at least 1, got {r.smp}")
    for fwd in r.forward:
        try:
            split_forward(fwd)
        except ValueError as e:
            raise ConfigError(f"{origin('run.forward')}: {e}") from None
    try:
        check_app_args(s.args)
    except ValueError as e:
        raise ConfigError(f"{origin('args')}: {e}") from None
    try:  # the longest line a boot of this image can have (microvm adds its NIC)
        kernel_cmdline(s.cmdline, s.args, RunOptions(machine=r.machine),
                       network=True, host_clock_ns=HOST_CLOCK_PLACEHOLDER)
    except RunError as e:
        raise ConfigError(f"{origin('cmdline')}, with the app's arguments: {e}") from None


def settings_schema_markdown() -> str:
    """A reference page for ``[tool.ukl-build]``, generated from the model."""
    lines = ["# `[tool.ukl-build]` reference", "",
             "Generated by `python -m ukl_build schema`; do not edit by hand.", ""]

    def table(cls: type, name: str) -> None:
        lines.extend([f"## `[{name}]`", "", "| key | default | meaning |", "|---|---|---|"])
        nested: list[tuple[type, str]] = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if cls is Settings and f.name in _TOP_LEVEL_ONLY:
                continue
            if f.default is not dataclasses.MISSING:
                default = repr(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = repr(f.default_factory())
            else:
                default = "(required)"
            tp = hints[f.name]
            sub = [a for a in (tp, *typing.get_args(tp))
                   if isinstance(a, type) and dataclasses.is_dataclass(a)]
            if sub and typing.get_origin(tp) is dict:  # a table of tables, one per NAME
                nested.append((sub[0], f"{name}.{_key(f.name)}.NAME"))
            elif sub:
                nested.append((sub[0], f"{name}.{_key(f.name)}"))
                default = "table"
            lines.append(f"| `{_key(f.name)}` | `{default}` | {f.metadata.get('doc', '')} |")
        lines.append("")
        for c, n in nested:
            table(c, n)

    table(Settings, "tool.ukl-build")
    lines.extend([
        "## Overrides",
        "",
        "Every key can be overridden with a PEP 517 config setting: "
        "`pip wheel . -C mode=user -C kernel.path=../linux -C kconfig.HZ_100=y`, "
        "`python -m build -C recipes='net;microvm'`, or `python -m ukl_build build -C ...`. "
        "Lists are separated by `;`. Setting any kernel source key replaces the "
        "project's source choice.",
        "",
    ])
    return "\n".join(lines)
