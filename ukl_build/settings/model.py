"""The settings model: ``[tool.ukl-build]`` as a tree of frozen dataclasses.

One dataclass per table; every field has a default and a ``doc`` in its
metadata, from which :mod:`ukl_build.settings.docs` writes
``docs/configuration.md``.  Fixed choices are ``Literal`` types, which the
loader checks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ukl_build.files import parse_size
from ukl_build.launcher.options import FIRMWARE_FORMATS as FIRMWARE_FORMATS
from ukl_build.launcher.options import Accel, Machine, RunOptions
from ukl_build.launcher.volumes import VolumeRecord
from ukl_build.project import Project

# Fixed choices are types: the loader checks membership, so validate.py
# keeps only the rules that span fields.
Mode = Literal["ukl", "user"]
Libc = Literal["nolibc", "glibc", "musl"]
Format = Literal["bzimage", "pvh", "efi", "disk"]
SourceKind = Literal["debian", "url", "path", "git"]


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class GitSettings:
    url: str = _doc("Repository URL or local path, anything `git fetch` accepts.")
    rev: str = _doc("Commit, tag or branch to build; a full commit id pins it.")


# The ways a tree is named that kernel and app sources share (TreeSource's fields).
TREE_KINDS = ("url", "path", "git")


@dataclass(frozen=True)
class TreeSource:
    """Where a source tree comes from, as the kernel's and an app's sources both name it
    (one of url, path, git; ukl_build.fetch gets it, verified, and records its origin)."""

    url: str | None = _doc("Archive URL (http, https or file); needs `sha256`.", default=None)
    sha256: str | None = _doc(
        "Expected sha256 of the archive: mandatory with `url`, checked for a `path` archive.",
        default=None)
    path: str | None = _doc("Local archive or directory, relative to the project.", default=None)
    git: GitSettings | None = _doc("Git repository and revision.", default=None)

    @property
    def tree_kind(self) -> str | None:
        """Which of url, path, git is set (validation allows one), or None."""
        return next((n for n in TREE_KINDS if getattr(self, n) is not None), None)


@dataclass(frozen=True)
class KernelSettings(TreeSource):
    version: str = _doc('Kernel series, "6.1" or "6.12": picks kernel_patches/linux-<version>/, the '
                        "recipes' overlays and (debian) the package.", default="6.1")
    source: SourceKind = _doc(
        'Where the tree comes from: "debian" (Debian\'s linux-source-<version> package, '
        'offline), "url", "path" or "git". Inferred from the key you set.',
        default="debian",
    )

    @property
    def kind(self) -> str:
        """Which of the source kinds is in use."""
        return self.tree_kind or self.source


@dataclass(frozen=True)
class AppSourceSettings(TreeSource):
    debian: str | None = _doc(
        "A Debian source package (e.g. \"redis\"): its upstream tarball, as apt verifies it "
        "against Debian's signed index; needs deb-src entries (scripts/setup.sh adds them).",
        default=None)


APP_SOURCE_KINDS = ("url", "path", "git", "debian")
# The recipe `hardened = true` (the default) applies first, before the app's own.
HARDENED_RECIPE = "hardened"
# ... and the recipe `mitigations` applies right after it (by default in user mode).
MITIGATIONS_RECIPE = "mitigations"
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
class FileSettings:
    path: str = _doc("The file or directory in the project that goes there.")
    mode: str | None = _doc(
        "Octal permissions in the image (e.g. \"0600\"), for a file or every file of a "
        "directory; default: the source's own (directories 0755).", default=None)


@dataclass(frozen=True)
class GenerateSettings:
    command: list[str] | None = _doc(
        "The generator as a command, run in the project directory: `{out}` is the directory "
        "its outputs go to, `{python}` the Python running ukl-build, and an argument that is "
        "exactly `{inputs}` becomes the input paths.", default=None)
    entry_point: str | None = _doc(
        "Or a Python function, `\"module:function\"` importable from the project directory, "
        "called as `function(out_dir, inputs)` with `pathlib.Path`s.", default=None)
    inputs: list[str] = _doc(
        "Project files and directories it reads; with its own files (a command's arguments "
        "that are project files, an entry point's module), they decide whether it runs "
        "again.", default_factory=list)
    outputs: list[str] = _doc(
        "What it makes, relative to `{out}`; each must exist afterwards. `.c` outputs are "
        "compiled with the app's `sources`; `{out}` is on every build's include path, and "
        "make and CMake arguments name it as `{generated.NAME}`.", default_factory=list)


@dataclass(frozen=True)
class VolumeSettings:
    mount: str = _doc("Where the app finds it: an absolute directory of the image, created "
                      "there (e.g. \"/data\").")
    size: str = _doc("Size of the file `run --volume NAME=PATH` creates and formats when PATH "
                     "does not exist (K, M, G; at least 8M).", default="64M")
    filesystem: Literal["ext4"] = _doc(
        "The file system: \"ext4\" (journalled; the only one for now).", default="ext4")
    read_only: bool = _doc(
        "Mounted read-only (and attached read-only): its file must exist, `run` does not "
        "create it.", default=False)


@dataclass(frozen=True)
class CMakeSettings:
    source_dir: str = _doc("CMake source directory, relative to the project (or `source`).", default=".")
    target: str = _doc("The executable target to build.", default="app")
    args: list[str] = _doc("Extra `-D...` arguments for configure.", default_factory=list)
    source: AppSourceSettings | None = _doc(_SOURCE_DOC, default=None)


@dataclass(frozen=True)
class RunSettings:
    machine: Machine | None = _doc(
        'QEMU machine: "microvm" or "q35". Default: microvm, or q35 when `formats` has '
        'efi or disk (UEFI firmware needs a PC).', default=None)
    memory: str = _doc("Guest memory, QEMU syntax (256M, 1G).", default=RunOptions.memory)
    smp: int = _doc("Virtual CPUs.", default=RunOptions.smp)
    accel: Accel = _doc('"tcg", "kvm" or "auto" (probes KVM first).', default=RunOptions.accel)
    forward: list[str] = _doc(
        'Port forwards "HOST:GUEST" (TCP, user-mode networking).', default_factory=list
    )


@dataclass(frozen=True)
class CompilerCacheSettings:
    remote_storage: str | None = _doc(
        "ccache's remote storage, in ccache's `remote_storage` syntax: `redis://HOST[:PORT]`, "
        "`http://HOST/PATH`, with attributes such as `|read-only`; several separated by "
        "spaces. Default: `$CCACHE_REMOTE_STORAGE` when set, else none.", default=None)
    remote_only: bool = _doc(
        "Use only the remote storage (ccache's `remote_only`): nothing is kept locally.",
        default=False)
    max_size: str = _doc("Size limit of the local compiler cache, ccache syntax (5G, 500M).",
                         default="5G")


@dataclass(frozen=True)
class CacheSettings:
    max_size: str | None = _doc(
        "After each build, trim ukl-build's cache to this size (5G, 500M): least recently used "
        "entries first (sources, trees, configs, kernel build dirs, images), never one a running "
        "build holds. Downloads, git mirrors and the compiler cache are not counted "
        "(`ccache.max-size` limits that). The same as `python -m ukl_build clean --max-size`. "
        "Default: no limit.", default=None)


@dataclass(frozen=True)
class DistccSettings:
    hosts: list[str] = _doc(
        "distcc hosts, `DISTCC_HOSTS` syntax (`localhost/2`, `10.0.0.5/8,lzo`); the kernel's "
        "compiles that miss the cache go to them (ccache's `CCACHE_PREFIX=distcc`). "
        "Default: `$DISTCC_HOSTS` when set, else none (compile locally).",
        default_factory=list)


@dataclass(frozen=True)
class SignSettings:
    cert: str = _doc("The signer's X.509 certificate (PEM), relative to the project.")
    key: str | None = _doc(
        "Its private key (PEM file), relative to the project; or use `key-env`.", default=None)
    key_env: str | None = _doc(
        "Name of an environment variable that holds the private key (PEM text), for CI "
        "secrets; read at build time, never written into the build's outputs.", default=None)


@dataclass(frozen=True)
class Origins:
    """Where a settings key came from, for error messages: pyproject.toml or ``-C``."""

    pyproject: str
    overridden: frozenset[str]  # dotted keys given with -C, as given

    def given(self, key: str) -> list[str]:
        """The -C keys (as given) at or below ``key``, compared in TOML spelling."""
        want = toml_key(key)
        return sorted(k for k in self.overridden
                      if toml_key(k) == want or toml_key(k).startswith(want + "."))

    def __call__(self, key: str) -> str:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            if toml_key(head := ".".join(parts[:n])) in map(toml_key, self.overridden):
                return f"config setting -C {head}"
        table = ".".join(["tool.ukl-build", *parts[:-1]])
        return f"{self.pyproject}: [{table}] {parts[-1]}"

    def table_of(self, key: str) -> str:
        """Where the table holding ``key`` came from (for keys that are missing or unknown)."""
        where = self(key)
        if where.startswith("config setting"):
            return f"{where}:"
        table = key.rsplit(".", 1)[0] if "." in key else ""
        given = self.given(table) if table else []
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
        "send, recv, readv, writev (on a socket straight to the protocol, skipping the file "
        "layer), sendmsg, recvmsg, accept, epoll_wait and epoll_ctl instead of the generic "
        "system call bridge. No effect in user mode.",
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
    generate: dict[str, GenerateSettings] = _doc(
        "Build-time code generators, run before the app is compiled "
        "(`[tool.ukl-build.generate.NAME]`): a command or a Python entry point, its inputs "
        "and its outputs, which go to the build directory (never the project) and are "
        "reused while the inputs and the generator are unchanged.",
        default_factory=dict)
    files: dict[str, FileSettings] = _doc(
        "Files and directories of the project shipped in the image's built-in initramfs, "
        "in both modes (`[tool.ukl-build.files.\"/etc/app.conf\"]` path = \"conf/app.conf\"): "
        "an absolute image path each; not where ukl-build puts its own (/init, /dev, /proc, "
        "/tmp, /etc/passwd, /etc/group). In the cache key, the manifest and the SBOM.",
        default_factory=dict)
    volumes: dict[str, VolumeSettings] = _doc(
        "Disks the kernel mounts before the app starts, in both modes "
        "(`[tool.ukl-build.volumes.data]` mount = \"/data\"): each a virtio-blk disk backed "
        "by a file that `run --volume NAME=PATH` (and the wheel's launcher) attach, creating "
        "and formatting it on first use (without --volume: a scratch file that ends with "
        "the VM). Adds the `storage` recipe.",
        default_factory=dict)
    recipes: list[str] = _doc(
        "Kernel config fragments on top of `base`: names from ukl-build's recipes/ or "
        "paths (*.config) relative to the project.",
        default_factory=lambda: ["microvm"],
    )
    hardened: bool = _doc(
        "Apply the `hardened` recipe first (kernel self-protection: stack protector, KASLR, "
        "read-only text, hardened allocator; see docs/security.md) and "
        "compile the app with a stack protector and stack-clash probes. "
        "false turns both off.",
        default=True,
    )
    mitigations: bool | None = _doc(
        "Apply the `mitigations` recipe after `hardened`: the kernel's defences against the "
        "CPU's speculative-execution bugs (retpolines, return thunks, entry barriers, SLS) "
        "and page-table isolation, which protect the kernel from a less privileged program "
        "beside it. Default: on in user mode when `hardened`, off in UKL mode, where the app "
        "is kernel code and there is no such program (docs/security.md).",
        default=None,
    )
    kconfig: dict[str, str] = _doc(
        'Extra kernel options, e.g. { HZ_100 = "y" }; each must survive olddefconfig.',
        default_factory=dict,
    )
    cmdline: str = _doc("Kernel command line for the app.", default="quiet")
    args: list[str] = _doc("The app's argv[1:].", default_factory=list)
    formats: list[Format] = _doc(
        'Images to produce: "bzimage" (QEMU -kernel, bootloaders), "pvh" (ELF vmlinux '
        'for QEMU/Firecracker/cloud-hypervisor direct boot), "efi" (the kernel as an EFI '
        'application, command line and app built in), "disk" (a raw GPT disk whose EFI '
        "system partition holds it as \\EFI\\BOOT\\BOOTX64.EFI: bare metal, UEFI VMs, "
        "clouds that import raw disks). With efi or disk the command line (`cmdline`, "
        "`args`) is built into the kernel, for every format of the build.",
        default_factory=lambda: ["bzimage"],
    )
    sign: SignSettings | None = _doc(
        "Secure Boot: sign the efi image (and the one in the disk) with sbsigntool.",
        default=None)
    kernel: KernelSettings = _doc("The kernel source.", default_factory=KernelSettings)
    musl: AppSourceSettings = _doc(
        'Where musl comes from for libc = "musl" (same keys as a make source); '
        "default: Debian's musl source package.",
        default_factory=lambda: AppSourceSettings(debian="musl"))
    run: RunSettings = _doc("Defaults for `ukl_build run` and the launcher.", default_factory=RunSettings)
    jobs: int | None = _doc(
        "Parallel compile jobs of the kernel build (make -j). Default: the CPU count, or with "
        "distcc hosts the sum of their slots.", default=None)
    cache: CacheSettings = _doc("ukl-build's own cache (`$UKL_BUILD_CACHE`).",
                                default_factory=CacheSettings)
    ccache: CompilerCacheSettings = _doc(
        "The compiler cache of kernel builds (used when ccache is installed).",
        default_factory=CompilerCacheSettings)
    distcc: DistccSettings = _doc("Distributed compilation of kernel builds.",
                                  default_factory=DistccSettings)

    @property
    def firmware_boot(self) -> bool:
        """Whether an image of this build boots through UEFI firmware (efi or disk format)."""
        return any(f in FIRMWARE_FORMATS for f in self.formats)

    @property
    def run_machine(self) -> Machine:
        """The machine the image boots on unless told otherwise."""
        if self.run.machine is not None:
            return self.run.machine
        return "q35" if self.firmware_boot else "microvm"

    @property
    def applies_mitigations(self) -> bool:
        """Whether the kernel gets the ``mitigations`` recipe: as set, or by default in a
        hardened user-mode build (UKL mode has no second privilege domain to defend)."""
        if self.mitigations is not None:
            return self.mitigations
        return self.mode == "user" and self.hardened

    @property
    def uses_shortcuts(self) -> bool:
        """Whether the app is built to call the kernel's shortcut entry points (UKL mode only)."""
        return self.mode == "ukl" and self.shortcuts

    def kconfig_items(self) -> list[tuple[str, str]]:
        return sorted(self.kconfig.items())


# Settings fields that are not keys of [tool.ukl-build].
TOP_LEVEL_ONLY = frozenset({"project_dir", "project", "origin"})


def toml_key(name: str) -> str:
    """The TOML spelling of a field name (``make_args`` -> ``make-args``)."""
    return name.replace("_", "-")

# ``{deps.NAME}`` in a make or configure argument.
_DEPS_REF = re.compile(r"\{deps\.([^{}]*)\}")
_GENERATED_REF = re.compile(r"\{generated\.([^{}]*)\}")


def deps_references(arg: str) -> list[str]:
    """The dependency names an argument refers to as ``{deps.NAME}``."""
    return _DEPS_REF.findall(arg)


def substitute_deps(arg: str, prefixes: Mapping[str, Path]) -> str:
    """``arg`` with each ``{deps.NAME}`` replaced by that dependency's install prefix."""
    return _DEPS_REF.sub(lambda m: str(prefixes[m.group(1)]), arg)


def generated_references(arg: str) -> list[str]:
    """The generator names an argument refers to as ``{generated.NAME}``."""
    return _GENERATED_REF.findall(arg)


def substitute_generated(arg: str, dirs: Mapping[str, Path]) -> str:
    """``arg`` with each ``{generated.NAME}`` replaced by that generator's output directory."""
    return _GENERATED_REF.sub(lambda m: str(dirs[m.group(1)]), arg)


def path_under(path: str, top: str) -> bool:
    """Whether the image path ``path`` is ``top`` or lies below it."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def volume_records(settings: Settings) -> list[VolumeRecord]:
    """The volumes as the manifest and the kernel command line have them, in the order
    the launcher attaches them (by name)."""
    return [v for _, v in volume_table(settings)]


def volume_table(settings: Settings) -> list[tuple[str, VolumeRecord]]:
    """(name, record) of each volume, by name."""
    return [(name, {"mount": v.mount, "size": parse_size(v.size), "filesystem": v.filesystem,
                    "read_only": v.read_only})
            for name, v in sorted(settings.volumes.items())]

