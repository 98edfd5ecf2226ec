"""Stage 3: kernel configuration from composable recipes, checked after olddefconfig.

``make tinyconfig``, then the ``base`` recipe, the app's recipes and its
``kconfig`` options merged on top, then ``make olddefconfig``.  Kconfig drops
an option silently when its dependencies are not met; we do not: every
requested option must survive, or the build stops listing each one dropped.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ukl_build.context import BuildContext
from ukl_build.errors import BuildError, ConfigError
from ukl_build.files import digest, file_sha256
from ukl_build.launcher.cmdline import builtin_cmdline
from ukl_build.patches import UNDECLARED_TOOLS, PatchedTree
from ukl_build.resources import recipes_dir
from ukl_build.settings import HARDENED_RECIPE, MITIGATIONS_RECIPE, Settings, volume_records

_SET = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")
_REQUIRES = re.compile(r"^#\s*requires:\s*(.*)$")


@dataclass(frozen=True)
class Option:
    name: str  # without CONFIG_
    value: str  # "y", "n", a number or a quoted string
    origin: str  # recipe or settings key that asked for it
    from_app: bool = False  # asked for by the app's kconfig table (not a recipe)


@dataclass(frozen=True)
class KernelConfig:
    path: Path  # the resolved .config (in the cache)
    key: str  # sha256 of the .config
    recipes: tuple[str, ...]
    requested: tuple[Option, ...]


def parse_fragment(text: str, origin: str) -> tuple[list[Option], list[str]]:
    """Options and ``# requires:`` recipe names of a config fragment."""
    options: list[Option] = []
    requires: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if m := _REQUIRES.match(line):
            requires.extend(m.group(1).split())
        elif m := _UNSET.match(line):
            options.append(Option(m.group(1), "n", origin))
        elif m := _SET.match(line):
            options.append(Option(m.group(1), m.group(2), origin))
        elif not line.startswith("#"):
            raise ConfigError(f"{origin}:{lineno}: not a kernel config line: {raw!r}")
    return options, requires


# Recipes a format needs on top of the app's (the pvh image is the ELF vmlinux).
FORMAT_RECIPES = {"pvh": "pvh", "efi": "efi", "disk": "efi"}
STORAGE_RECIPE = "storage"  # what [tool.ukl-build.volumes] need: virtio-blk, ext4, volume=


def recipes_for(settings: Settings) -> list[str]:
    """The app's recipes plus what its mode, volumes and image formats need (base comes first anyway;
    with ``hardened``, the hardened recipe next and then, where they apply, the
    mitigations, so the app's recipes and the mode's can take back what does not apply to
    them)."""
    recipes = list(settings.recipes)
    first = [name for name, on in ((HARDENED_RECIPE, settings.hardened),
                                   (MITIGATIONS_RECIPE, settings.applies_mitigations))
             if on and name not in recipes]
    recipes[:0] = first
    if settings.mode == "ukl" and "ukl" not in recipes:
        recipes.append("ukl")
    if settings.volumes and STORAGE_RECIPE not in recipes:
        recipes.append(STORAGE_RECIPE)
    for fmt in settings.formats:
        if fmt in FORMAT_RECIPES and FORMAT_RECIPES[fmt] not in recipes:
            recipes.append(FORMAT_RECIPES[fmt])
    return recipes


def generated_options(settings: Settings) -> list[Option]:
    """Options ukl-build derives from other settings: for the efi and disk formats, the
    command line, built in (firmware boots pass none)."""
    if not settings.firmware_boot:
        return []
    where = f"{settings.origin('formats')} (efi/disk: the built-in command line)"
    line = builtin_cmdline(settings.cmdline, settings.args, volumes=volume_records(settings))
    return [Option("CMDLINE_BOOL", "y", where), Option("CMDLINE", quote_string(line), where),
            Option("CMDLINE_OVERRIDE", "n", where)]


def quote_string(value: str) -> str:
    """A kconfig string value as .config spells it."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def resolve_recipes(names: list[str], project_dir: Path,
                    series: str | None = None) -> list[tuple[str, Path]]:
    """``base`` first, then each recipe after the recipes it requires, each once.

    One of our recipes that a kernel series needs changed has an overlay,
    ``recipes/linux-<series>/<name>.config``: it comes right after the recipe (its
    options win) and is listed as ``linux-<series>/<name>``."""
    ordered: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def overlay(name: str, path: Path) -> None:
        if series is None or path.parent != recipes_dir():
            return
        o = recipes_dir() / f"linux-{series}" / f"{name}.config"
        if o.is_file():
            ordered.append((f"linux-{series}/{name}", o))

    def locate(name: str, where: str) -> Path:
        if name.endswith(".config"):
            p = (project_dir / name).resolve()
            if not p.is_file():
                raise ConfigError(f"{where}: recipe file {p} does not exist")
            return p
        p = recipes_dir() / f"{name}.config"
        if not p.is_file():
            known = ", ".join(sorted(x.stem for x in recipes_dir().glob("*.config")))
            raise ConfigError(f"{where}: unknown recipe {name!r}", hint=f"known recipes: {known}")
        return p

    def visit(name: str, where: str, stack: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in stack:
            raise ConfigError(f"recipes: circular 'requires' through {' -> '.join((*stack, name))}")
        path = locate(name, where)
        _, requires = parse_fragment(path.read_text(), str(path))
        for dep in requires:
            visit(dep, str(path), (*stack, name))
        seen.add(name)
        ordered.append((name, path))
        overlay(name, path)

    for name in ["base", *names]:
        visit(name, "[tool.ukl-build] recipes", ())
    return ordered


def requested_options(
    recipes: list[tuple[str, Path]], extra: list[tuple[str, str]],
    origin: Callable[[str], str] | None = None,
) -> list[Option]:
    """Merged options: later recipes override earlier ones, the app's options override all.

    ``origin`` names where an app option came from (``Settings.origin``: pyproject or -C).
    """
    merged: dict[str, Option] = {}
    for name, path in recipes:
        options, _ = parse_fragment(path.read_text(), f"recipe {name}")
        for opt in options:
            merged[opt.name] = opt
    for name, value in extra:
        bare = name.removeprefix("CONFIG_")
        where = origin(f"kconfig.{name}") if origin else f"[tool.ukl-build] kconfig.{name}"
        merged[bare] = Option(bare, _normalise(value), where, from_app=True)
    return list(merged.values())


def _normalise(value: str) -> str:
    if value in ("y", "n") or re.fullmatch(r"-?\d+|0x[0-9a-fA-F]+", value):
        return value
    if value.startswith('"') and value.endswith('"'):
        return value
    return quote_string(value)


def read_config(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if m := _SET.match(line):
            values[m.group(1)] = m.group(2)
    return values


def merge_into(config: Path, options: list[Option]) -> None:
    """Replace or append each option's line in a .config."""
    names = {o.name for o in options}
    kept = []
    for line in config.read_text().splitlines():
        m = _SET.match(line) or _UNSET.match(line)
        if m and m.group(1) in names:
            continue
        kept.append(line)
    for o in options:
        kept.append(f"# CONFIG_{o.name} is not set" if o.value == "n" else f"CONFIG_{o.name}={o.value}")
    config.write_text("\n".join(kept) + "\n")


def dropped_options(config: Path, options: list[Option]) -> list[tuple[Option, str]]:
    """Requested options that olddefconfig did not keep, with what they became."""
    got = read_config(config)
    dropped = []
    for o in options:
        actual = got.get(o.name, "n")
        if actual != o.value:
            dropped.append((o, "not set" if actual == "n" else actual))
    return dropped


@dataclass(frozen=True)
class Symbol:
    """What the tree's Kconfig files say of one option."""

    name: str
    type: str | None  # bool, tristate, int, hex, string; None: no such option
    depends: tuple[str, ...] = ()
    ranges: tuple[str, ...] = ()

    def value_error(self, value: str) -> str | None:
        """Why ``value`` is not a value of this option's type (None: it is one)."""
        ok = {"bool": r"[yn]", "tristate": r"[yn]", "int": r"-?\d+",
              "hex": r"(0[xX])?[0-9a-fA-F]+", "string": r'".*"'}.get(self.type or "")
        if ok is None or re.fullmatch(ok, value):
            return None
        expected = {"bool": "y or n", "tristate": "y or n", "int": "a decimal integer",
                    "hex": "a hexadecimal number", "string": "a string"}[self.type or "string"]
        article = "an" if self.type == "int" else "a"
        return f"{article} {self.type} option takes {expected}"

    def hint(self) -> str:
        if self.type is None:
            return "no such option in this kernel"
        facts = [f"range {r}" for r in self.ranges] + list(self.depends)
        return "; ".join(facts) or "check its dependencies (select/choice)"


_TYPE = re.compile(r"^(bool|tristate|int|hex|string|def_bool|def_tristate)\b")
_BLOCK_END = re.compile(r"^(config|menuconfig|choice|endchoice|menu|endmenu|if|endif|source)\b")


def find_symbols(tree: Path, names: set[str]) -> dict[str, Symbol]:
    """Type, ranges and dependencies of each option in ``names``, in one pass over Kconfig files."""
    wanted = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$")
    found: dict[str, dict[str, Any]] = {}
    for kconfig in tree.rglob("Kconfig*"):
        rel = kconfig.relative_to(tree).parts
        if not kconfig.is_file() or (rel[0] == "arch" and rel[1] not in ("x86", "Kconfig")):
            continue  # other architectures' definitions would only mislead
        lines = kconfig.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            m = wanted.match(line)
            if not m or m.group(1) not in names:
                continue
            facts = found.setdefault(m.group(1), {"type": None, "depends": set(), "ranges": set()})
            _read_entry(lines[i + 1: i + 40], facts)
    return {n: Symbol(n, f["type"], tuple(sorted(f["depends"])), tuple(sorted(f["ranges"])))
            if (f := found.get(n)) else Symbol(n, None) for n in names}


def _read_entry(lines: list[str], facts: dict[str, Any]) -> None:
    """Add what the lines of one config entry (up to its end) say to ``facts``: its
    type (the first one given), its dependencies and its ranges."""
    for line in lines:
        text = line.strip()
        if _BLOCK_END.match(text):
            return
        if t := _TYPE.match(text):
            facts["type"] = facts["type"] or t.group(1).removeprefix("def_")
        elif text.startswith("depends on"):
            facts["depends"].add(text)
        elif text.startswith("range "):
            facts["ranges"].add(text.removeprefix("range ").strip())


def check_values(tree: Path, options: list[Option]) -> None:
    """Refuse, before any make, app options the kernel does not have or values of the wrong type."""
    mine = [o for o in options if o.from_app]
    symbols = find_symbols(tree, {o.name for o in mine})
    bad = []
    for o in mine:
        sym = symbols[o.name]
        if sym.type is None:
            bad.append(f"    {o.origin} = {o.value}: no such option in this kernel")
        elif why := sym.value_error(o.value):
            bad.append(f"    {o.origin} = {o.value}: {why}")
    if bad:
        raise ConfigError("kconfig: option values the kernel cannot take:\n" + "\n".join(bad))


@dataclass(frozen=True)
class ConfigRequest:
    """What a build asks of the kernel's configuration: recipes by name (the project's
    own ``recipes/`` first, then ours), the app's options (``origin`` says where each
    came from, for messages), and options generated from other settings, which win."""

    recipes: list[str]
    extra: list[tuple[str, str]]
    project_dir: Path
    origin: Callable[[str], str] | None = None
    generated: Sequence[Option] = ()
    series: str | None = None  # the kernel series, for the recipes' per-series overlays

    @classmethod
    def of(cls, settings: Settings) -> ConfigRequest:
        return cls(recipes_for(settings), settings.kconfig_items(), settings.project_dir,
                   settings.origin, generated_options(settings), settings.kernel.version)


def toolchain_identity(ctx: BuildContext) -> tuple[str, ...]:
    """The first lines of ``gcc --version`` and ``ld --version``, found as make finds
    them (its PATH).  Kconfig writes the compiler's, assembler's and linker's versions
    into .config (``CC_VERSION_TEXT``, ``GCC_VERSION``, ``AS_VERSION``, ``LD_VERSION``,
    and every option that tests them), so a resolved configuration belongs to the
    tools it was resolved with: after an upgrade it is resolved again, not reused."""
    lines = []
    for tool in ("gcc", "ld"):
        out = ctx.reporter.capture([tool, "--version"], step=f"kconfig ({tool} --version)",
                                   env=ctx.env).text
        lines.append(out.splitlines()[0] if out else "")
    return tuple(lines)


def configure(tree: PatchedTree, request: ConfigRequest, ctx: BuildContext) -> KernelConfig:
    """The resolved .config: recipes, then the app's options, then the generated ones."""
    cache, reporter, make_env = ctx.cache, ctx.reporter, ctx.env
    recipes = resolve_recipes(request.recipes, request.project_dir, request.series)
    options = requested_options(recipes, request.extra, request.origin)
    names = {o.name for o in request.generated}
    options = [o for o in options if o.name not in names] + list(request.generated)
    fragments = [(n, file_sha256(p)) for n, p in recipes]
    key = digest("kconfig", tree.key, fragments, [(o.name, o.value) for o in options],
                 UNDECLARED_TOOLS, toolchain_identity(ctx))

    def make(tmp: Path) -> None:
        tree.check(cache)
        check_values(tree.path, options)  # a cached entry was checked when it was made
        build = tmp / "o"
        reporter.stage("kconfig", f"tinyconfig + {', '.join(n for n, _ in recipes)}")
        reporter.run(tree.make(build, "-s", "tinyconfig"), step="kconfig (make tinyconfig)",
                     env=make_env)
        merge_into(build / ".config", options)
        reporter.run(tree.make(build, "-s", "olddefconfig"), step="kconfig (make olddefconfig)",
                     env=make_env)
        dropped = dropped_options(build / ".config", options)
        if dropped:
            symbols = find_symbols(tree.path, {o.name for o, _ in dropped})
            lines = [
                f"    CONFIG_{o.name}={o.value} (from {o.origin}) became {became}: "
                f"{symbols[o.name].hint()}"
                for o, became in dropped
            ]
            raise BuildError(
                f"kconfig: {len(dropped)} requested option(s) did not survive olddefconfig:\n"
                + "\n".join(lines),
                hint="enable what they depend on (another recipe or a kconfig entry), "
                "or drop the request",
            )
        shutil.copy2(build / ".config", tmp / ".config")
        shutil.rmtree(build)

    entry = cache.entry("kconfig", key, make)
    config = entry / ".config"
    return KernelConfig(
        path=config,
        key=file_sha256(config),
        recipes=tuple(n for n, _ in recipes),
        requested=tuple(options),
    )
