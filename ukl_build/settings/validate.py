"""Rules that span fields (one field's own type is the loader's check)."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from ukl_build.errors import ConfigError
from ukl_build.files import parse_size
from ukl_build.launcher.cmdline import (
    HOST_CLOCK_PLACEHOLDER,
    BootClock,
    ImageLine,
    check_app_args,
    kernel_cmdline,
)
from ukl_build.launcher.options import RunError, RunOptions
from ukl_build.launcher.qemu import split_forward
from ukl_build.launcher.volumes import MAX_VOLUMES, MIN_SIZE
from ukl_build.resources import patches_dir
from ukl_build.settings.model import (
    APP_SOURCE_KINDS,
    HARDENED_RECIPE,
    MITIGATIONS_RECIPE,
    TREE_KINDS,
    AppSourceSettings,
    GenerateSettings,
    KernelSettings,
    Origins,
    Settings,
    TreeSource,
    deps_references,
    generated_references,
    path_under,
    volume_records,
)

_KCONFIG_NAME = re.compile(r"^[A-Z0-9_]+$")
_MEMORY = re.compile(r"^[1-9][0-9]*[KMGT]?$", re.IGNORECASE)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# A volume's or a generator's name: a TOML key, a QEMU id and a directory name.
_TABLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# Where the initramfs has ukl-build's own: no volume is mounted over them.
_RESERVED_MOUNTS = ("/dev", "/proc", "/tmp", "/etc", "/init")


def _inside(project_dir: Path, rel: str, where: str, fetched: bool = False) -> None:
    """App inputs must live in the project (the sdist carries only the project), or in
    the fetched source tree."""
    path = (project_dir / rel).resolve()
    if path != project_dir and project_dir not in path.parents:
        if fetched:
            raise ConfigError(f"{where}: {rel!r} leaves the fetched source tree")
        raise ConfigError(f"{where}: {rel!r} is outside the project ({path}); an sdist "
                          "would not carry it", hint="move it into the project directory")


def validate(s: Settings, origin: Origins) -> None:
    if s.mode == "ukl" and s.libc == "glibc":
        raise ConfigError(f"{origin('libc')}: mode 'ukl' needs 'nolibc' or 'musl' "
                          "(the host's glibc issues system calls ring 0 cannot make)")
    if s.libc == "musl":
        _validate_app_source(s.musl, "musl", origin)
    if not s.formats:
        raise ConfigError(f"{origin('formats')}: name at least one format")
    _validate_build_kind(s, origin)
    _validate_deps(s, origin)
    _validate_volumes(s, origin)
    _validate_generate(s, origin)
    _validate_recipes(s, origin)
    _validate_kconfig(s, origin)
    _validate_kernel(s.kernel, origin)
    _validate_run(s, origin)
    _validate_sign(s, origin)
    _validate_build_resources(s, origin)


def _validate_build_kind(s: Settings, origin: Origins) -> None:
    """Exactly one of sources, make, cmake; their paths inside the project (or inside
    the fetched tree, for a build of a fetched source)."""
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


def _validate_recipes(s: Settings, origin: Origins) -> None:
    for recipe in s.recipes:
        if recipe.endswith(".config"):
            _inside(s.project_dir, recipe, origin("recipes"))
    if s.hardened and s.mode == "ukl" and s.kconfig.get("STACKPROTECTOR") == "n":
        # The app's canary checks read the kernel's canary and call its handler.
        raise ConfigError(
            f"{origin('kconfig.STACKPROTECTOR')}: turns the kernel's stack protector off, "
            "which a hardened UKL app's canary checks call into",
            hint="set hardened = false to build both without it")
    if not s.hardened and HARDENED_RECIPE in s.recipes:
        raise ConfigError(
            f"{origin('recipes')}: names the {HARDENED_RECIPE!r} recipe while "
            f"{origin('hardened')} turns it off",
            hint="drop one of the two; hardened = true (the default) applies the recipe")
    if s.mitigations is False and MITIGATIONS_RECIPE in s.recipes:
        raise ConfigError(
            f"{origin('recipes')}: names the {MITIGATIONS_RECIPE!r} recipe while "
            f"{origin('mitigations')} turns it off",
            hint="drop one of the two; mitigations = true applies the recipe")


def _validate_build_resources(s: Settings, origin: Origins) -> None:
    for key, size in (("cache.max-size", s.cache.max_size),
                      ("ccache.max-size", s.ccache.max_size)):
        if size is not None:
            try:
                parse_size(size)
            except ValueError as e:
                raise ConfigError(f"{origin(key)}: {e}") from None
    if s.jobs is not None and s.jobs < 1:
        raise ConfigError(f"{origin('jobs')}: {s.jobs} jobs; at least 1")
    for host in s.distcc.hosts:
        if not host.strip() or any(c.isspace() for c in host.strip()):
            raise ConfigError(f"{origin('distcc.hosts')}: {host!r} is not one distcc host",
                              hint='one host per list item: ["10.0.0.5/8", "10.0.0.6/8"]')


def _validate_sign(s: Settings, origin: Origins) -> None:
    if s.sign is None:
        return
    if not s.firmware_boot:
        raise ConfigError(f"{origin.table_of('sign.cert')} signing applies to the efi and disk formats, "
                          f"and formats is {s.formats}", hint='formats = ["efi", "disk"]')
    keys = [k for k in ("key", "key_env") if getattr(s.sign, k) is not None]
    if len(keys) != 1:
        raise ConfigError(f"{origin('sign.key')}: set exactly one of key, key-env "
                          f"(got {', '.join(keys) or 'none'})")


def _validate_kconfig(s: Settings, origin: Origins) -> None:
    for name, value in s.kconfig.items():
        where = origin(f"kconfig.{name}")
        bare = name.removeprefix("CONFIG_")
        if not _KCONFIG_NAME.match(bare):
            raise ConfigError(f"{where}: {name!r} is not a kernel option name")
        if value == "m":
            raise ConfigError(f"{where}: modules are not supported (the kernel has no "
                              'module loader); use "y"')
        if bare.startswith("CMDLINE") and s.firmware_boot:
            raise ConfigError(f"{where}: with the efi or disk format ukl-build builds the "
                              "command line into the kernel from `cmdline` and `args`",
                              hint="put kernel parameters in cmdline")
        if bare.startswith("INITRAMFS_COMPRESSION_") and bare != "INITRAMFS_COMPRESSION_NONE":
            raise ConfigError(f"{where}: the built-in initramfs stays uncompressed (the whole "
                              "image is compressed already, and the build checks the app in it)")


def _validate_kernel(k: KernelSettings, origin: Origins) -> None:
    _validate_kernel_kind(k, origin)
    _validate_tree_source(k, "kernel", origin)
    if not re.match(r"^\d+\.\d+$", k.version):
        raise ConfigError(f"{origin('kernel.version')}: expected e.g. \"6.1\", got {k.version!r}")
    series = sorted((p.name.removeprefix("linux-") for p in patches_dir().glob("linux-*")
                     if (p / "series").is_file()), key=lambda v: tuple(map(int, v.split("."))))
    if k.version not in series:
        raise ConfigError(f"{origin('kernel.version')}: no UKL patch series for Linux "
                          f"{k.version}", hint=f"series in kernel_patches/: {', '.join(series)}")


def _validate_kernel_kind(k: KernelSettings, origin: Origins) -> None:
    """One of url, path, git at most, and ``source`` (if given) naming the same kind."""
    chosen = [n for n in TREE_KINDS if getattr(k, n) is not None]
    if len(chosen) > 1:
        raise ConfigError(f"{origin('kernel.' + chosen[-1])}: set only one of url, path, git "
                          f"(got {', '.join(chosen)})")
    kind = k.kind
    if kind != k.source and k.source != "debian":
        raise ConfigError(f"{origin('kernel.source')}: {k.source!r} contradicts the {kind} key")
    if kind in TREE_KINDS and not chosen:
        raise ConfigError(f"{origin('kernel.source')}: {kind!r} needs the {kind} key")


def _validate_app_source(src: AppSourceSettings, key: str, origin: Origins) -> None:
    chosen = [n for n in APP_SOURCE_KINDS if getattr(src, n) is not None]
    if len(chosen) != 1:
        raise ConfigError(f"{origin(key)}: set exactly one of {', '.join(APP_SOURCE_KINDS)} "
                          f"(got {chosen or 'none'})")
    _validate_tree_source(src, key, origin)


def _validate_tree_source(src: TreeSource, key: str, origin: Origins) -> None:
    """What every source tree's keys must hold, the kernel's and an app's alike."""
    if src.sha256 is not None and not _SHA256.match(src.sha256.lower()):
        raise ConfigError(f"{origin(key + '.sha256')}: expected 64 hex digits, got {src.sha256!r}")
    if src.url is not None and not src.sha256:
        raise ConfigError(f"{origin(key + '.sha256')}: required with url "
                          "(a download is only used once verified)")
    if src.git is not None and not src.git.rev.strip():
        raise ConfigError(f"{origin(key + '.git.rev')}: must name a commit, tag or branch")


def _validate_volumes(s: Settings, origin: Origins) -> None:
    if len(s.volumes) > MAX_VOLUMES:
        raise ConfigError(f"{origin('volumes')}: {len(s.volumes)} volumes; at most "
                          f"{MAX_VOLUMES} (the virtio transports microvm has for them)")
    mounts: dict[str, str] = {}
    for name, v in sorted(s.volumes.items()):
        if not _TABLE_NAME.match(name):
            raise ConfigError(f"{origin(f'volumes.{name}')}: {name!r} is not a usable volume "
                              "name (lower-case letters, digits, '_', '-'; up to 32)")
        where = origin(f"volumes.{name}.mount")
        _check_mount(v.mount, where)
        for other, mount in mounts.items():
            if path_under(v.mount, mount) or path_under(mount, v.mount):
                raise ConfigError(f"{where}: {v.mount} and volume {other}'s {mount} nest; "
                                  "mount each volume on a directory of its own")
        mounts[name] = v.mount
        for target in s.files:
            if path_under(target.rstrip("/"), v.mount):
                raise ConfigError(f"{where}: the volume would hide {target} of "
                                  "[tool.ukl-build.files]; ship it elsewhere or drop it")
        try:
            size = parse_size(v.size)
        except ValueError as e:
            raise ConfigError(f"{origin(f'volumes.{name}.size')}: {e}") from None
        if size < MIN_SIZE:
            raise ConfigError(f"{origin(f'volumes.{name}.size')}: {v.size} is below the "
                              f"{MIN_SIZE >> 20}M an ext4 file system with a journal needs")


def _validate_generate(s: Settings, origin: Origins) -> None:
    for name, g in s.generate.items():
        _validate_generator(name, g, s.project_dir, origin)
    lists = [("make.args", s.make.args if s.make else []),
             ("make.configure", (s.make.configure or []) if s.make else []),
             ("cmake.args", s.cmake.args if s.cmake else [])]
    for key, args in lists:
        _check_references(args, set(s.generate), origin(key), "generated")


def _validate_generator(name: str, g: GenerateSettings, project_dir: Path,
                        origin: Origins) -> None:
    where = origin(f"generate.{name}")
    if not _TABLE_NAME.match(name):
        raise ConfigError(f"{where}: {name!r} is not a usable generator name (lower-case "
                          "letters, digits, '_', '-'; up to 32)")
    if (g.command is None) == (g.entry_point is None):
        raise ConfigError(f"{where}: set exactly one of command, entry-point")
    if g.command is not None and not g.command:
        raise ConfigError(f"{origin(f'generate.{name}.command')}: an empty command")
    if g.entry_point is not None and not _ENTRY_POINT.match(g.entry_point):
        raise ConfigError(f"{origin(f'generate.{name}.entry-point')}: expected "
                          f"\"module:function\", got {g.entry_point!r}")
    _check_generator_paths(name, g, project_dir, origin)


def _check_generator_paths(name: str, g: GenerateSettings, project_dir: Path,
                           origin: Origins) -> None:
    """Outputs inside the output directory, inputs inside the project."""
    if not g.outputs:
        raise ConfigError(f"{origin(f'generate.{name}.outputs')}: name what it makes")
    for out in g.outputs:
        if out.startswith("/") or posixpath.normpath(out) != out or out.startswith(".."):
            raise ConfigError(f"{origin(f'generate.{name}.outputs')}: {out!r} is not a "
                              "plain path inside the output directory")
    for rel in g.inputs:
        _inside(project_dir, rel, origin(f"generate.{name}.inputs"))
        if not (project_dir / rel).exists():
            raise ConfigError(f"{origin(f'generate.{name}.inputs')}: {rel} does not exist")


def _check_mount(mount: str, where: str) -> None:
    """An absolute, plain directory of the image that the kernel command line can carry,
    not one of ukl-build's own."""
    if not mount.startswith("/") or any(c.isspace() or c in ":," for c in mount):
        raise ConfigError(f"{where}: {mount!r}: expected an absolute directory without white "
                          "space, ':' or ','")
    if posixpath.normpath(mount) != mount or mount == "/" or ".." in mount.split("/"):
        raise ConfigError(f"{where}: {mount!r} is not a plain absolute directory (no '.', "
                          "'..', '//', trailing '/' or the root itself)")
    if any(path_under(mount, r) for r in _RESERVED_MOUNTS):
        raise ConfigError(f"{where}: {mount} is where ukl-build puts its own "
                          f"({', '.join(_RESERVED_MOUNTS)})")


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
        _check_references(args, known, origin(key))


# What ``{KIND.NAME}`` in an argument refers to: how to find the names, what they must be.
_REFERENCES = {"deps": (deps_references, "a dependency built before it"),
               "generated": (generated_references, "a [tool.ukl-build.generate] entry")}


def _check_references(args: list[str], known: set[str], where: str,
                      kind: str = "deps") -> None:
    """Each ``{KIND.NAME}`` in ``args`` names one of ``known``: a dependency built before
    them, or a generator."""
    references, what = _REFERENCES[kind]
    for arg in args:
        for ref in references(arg):
            if ref not in known:
                raise ConfigError(f"{where}: {arg!r} names {{{kind}.{ref}}}, which is not "
                                  f"{what}",
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
    if s.firmware_boot and r.machine == "microvm":
        raise ConfigError(f"{origin('run.machine')}: the efi and disk formats boot through UEFI "
                          "firmware, which QEMU's microvm does not have", hint='machine = "q35"')
    try:  # the longest line a boot of this image can have (microvm adds its NIC)
        kernel_cmdline(ImageLine(s.cmdline, s.args, network=True, volumes=volume_records(s)),
                       RunOptions(machine=s.run_machine),
                       BootClock(host_clock_ns=HOST_CLOCK_PLACEHOLDER))
    except RunError as e:
        raise ConfigError(f"{origin('cmdline')}, with the app's arguments: {e}") from None
