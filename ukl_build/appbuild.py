"""Stage 4+5: compile the app against the fetched tree and link it for the chosen mode.

The default libc is the tree's own ``tools/include/nolibc`` (header-only),
extended by ``ukl_build/runtime/include``; the app includes ordinary headers
(``<stdio.h>``, ``<sys/socket.h>``, ...) that resolve there.  ``libc = "glibc"``
links the host's static glibc instead (user mode only).

Plain sources are compiled directly; ``make`` and ``cmake`` projects get the
compiler and flags through CC/CFLAGS/LDFLAGS/LDLIBS (make) or a toolchain
file (CMake + Ninja), each in a copy of the project inside the build dir.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ukl_build.cache import Cache
from ukl_build.context import BuildContext
from ukl_build.deps import Dep, DepToolchain, Flags, build_deps, dep_flags, prefixes
from ukl_build.errors import BuildError
from ukl_build.fetch import directory_digest
from ukl_build.files import atomic_write_text, digest, file_sha256
from ukl_build.generate import Generated, generate, generated_dirs, generated_key
from ukl_build.libc import MuslSysroot, build_musl, gcc_file
from ukl_build.patches import PatchedTree
from ukl_build.progress import Reporter
from ukl_build.resources import runtime_dir
from ukl_build.settings import Settings, substitute_deps, substitute_generated
from ukl_build.source import AppSource, fetch_app_source
from ukl_build.toolchain import CACHE_PREFIX, Toolchain, compiler, compiler_version, prefix_map, toolchain
from ukl_build.ukl_object import check_static_elf, ukl_archive

_SKIP_DIRS = frozenset({"build", "dist", ".git", "__pycache__", ".venv"})
SYSROOT_FORMAT = 2  # bump when make_sysroot copies other files from the same tree
APP_FORMAT = 3  # bump when the app build changes what it makes from the same inputs
APP_RECORD = "record.json"


@dataclass(frozen=True)
class AppBinary:
    path: Path  # user mode: the static /init; ukl mode: the archive linked into vmlinux
    sha256: str
    libc: str
    compiler: str
    mode: str
    marker: bytes = b""  # UKL: a string the archive puts into vmlinux's .rodata (see ukl_archive)
    source: dict[str, Any] | None = None  # where a fetched source tree came from (its digest)
    libc_source: dict[str, Any] | None = None  # musl: its version and source
    deps: tuple[dict[str, Any], ...] = ()  # libraries built from source (deps.Dep.record)


# What newer nolibc defines itself and runtime/include adds for older ones (6.1's has
# neither, 6.12's both): the runtime's header skips its own definition where the tree's
# nolibc has one.
NOLIBC_PROVIDES = {"UNAME": re.compile(r"^int uname\(", re.M),
                   "SYSCALL": re.compile(r"^#define syscall\(", re.M)}


def nolibc_features(nolibc: Path) -> str:
    """ukl_nolibc_has.h: a ``UKL_NOLIBC_HAS_<NAME>`` for each of NOLIBC_PROVIDES that the
    tree's nolibc headers define."""
    text = "\n".join(h.read_text(errors="replace") for h in sorted(nolibc.glob("*.h")))
    lines = ["/* Written by ukl-build: what this tree's nolibc defines itself. */"]
    lines += [f"#define UKL_NOLIBC_HAS_{name} 1" for name, pattern in NOLIBC_PROVIDES.items()
              if pattern.search(text)]
    return "\n".join(lines) + "\n"


def make_sysroot(tree: PatchedTree, mode: str, ctx: BuildContext) -> Path:
    """nolibc headers + the tree's UAPI headers: what ``headers_standalone`` makes, out of tree.

    In UKL mode nolibc's ``arch.h`` is ukl-build's, which sends the syscall
    macros to the kernel's ``ukl_syscall()`` instead of the ``syscall`` instruction.
    """
    cache, reporter, env = ctx.cache, ctx.reporter, ctx.env
    ukl_arch = runtime_dir() / "ukl" / "arch.h"
    key = digest("sysroot", SYSROOT_FORMAT, tree.key, mode,
                 file_sha256(ukl_arch) if mode == "ukl" else None)

    def make(tmp: Path) -> None:
        reporter.stage("app", f"preparing the nolibc sysroot ({mode} mode) from the kernel tree")
        include = tmp / "include"
        include.mkdir()
        src = tree.path / "tools/include/nolibc"
        # Every header but the other architectures' (the set grows: 6.12 added crt.h,
        # compiler.h, stdint.h and more); arch.h is replaced below.
        for header in sorted(src.glob("*.h")):
            if not header.name.startswith("arch"):
                shutil.copy2(header, include / header.name)
        (include / "ukl_nolibc_has.h").write_text(nolibc_features(src))
        if mode == "ukl":
            shutil.copy2(src / "arch-x86_64.h", include / "arch-x86_64.h")
            shutil.copy2(ukl_arch, include / "arch.h")
        else:
            shutil.copy2(src / "arch-x86_64.h", include / "arch.h")
        # `make headers`, then copy the .h files ourselves: headers_install would
        # need rsync for nothing more than this copy.
        tree.check(cache)
        reporter.run(
            tree.make(tmp / "o", "-s", "headers"),
            step="app (kernel make headers)", env=env,
        )
        generated = tmp / "o" / "usr" / "include"
        for header in sorted(generated.rglob("*.h")):
            dest = include / header.relative_to(generated)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(header, dest)
        shutil.rmtree(tmp / "o")

    return cache.entry("sysroots", key, make, check=False)  # checked before a compile


@dataclass(frozen=True)
class AppPlan:
    """How the app will be built and what decides whether it must be: the toolchain (and
    the one configure checks run with), the C library and dependencies it links, the
    fetched source, its work directory and the digest of every input.  Making a plan
    compiles nothing of the app; it makes (or finds in the cache) what the app is
    compiled against."""

    tc: Toolchain
    probe: Flags
    version: str  # the compiler's
    musl: MuslSysroot | None
    source: AppSource | None
    deps: tuple[Dep, ...]
    libraries: tuple[Path, ...]  # cache entries the compiles read: checked before them
    root: Path  # the tree built: the fetched source's, else the project's
    app_dir: Path
    inputs_key: str
    generated: tuple[Generated, ...] = ()  # [tool.ukl-build.generate], already run


def build_app(settings: Settings, tree: PatchedTree, build_dir: Path, ctx: BuildContext) -> AppBinary:
    """The app, compiled for its mode and libc; reused when nothing it is made from changed.

    One work directory per configuration (mode, libc, toolchain, flags) keeps
    make's and CMake's own incremental state; a record written after each
    successful build names the inputs' digest and the output's, so an
    unchanged project runs no compiler, and a build that did not finish (no
    record) starts that directory afresh.  Contents, not timestamps, decide.
    """
    plan = plan_app(settings, tree, build_dir, ctx)
    reused = _reuse(plan, settings)
    if reused is not None:
        ctx.reporter.stage("app", f"unchanged: reusing {reused.path.name} (no compiler run)")
        return reused
    return _execute(plan, settings, ctx)


def plan_app(settings: Settings, tree: PatchedTree, build_dir: Path, ctx: BuildContext) -> AppPlan:
    """The plan of the app's build (see :class:`AppPlan`)."""
    cache, reporter = ctx.cache, ctx.reporter
    sysroot = make_sysroot(tree, settings.mode, ctx) if settings.libc == "nolibc" else None
    cc = compiler()
    version = compiler_version(cc, reporter)
    gcc_include = gcc_file(cc, "include", reporter)
    musl = build_musl(settings, version, ctx) if settings.libc == "musl" else None
    # The C library entries are checked (every file hashed) only before something is
    # compiled against them: an unchanged app that reuses its output reads none of it.
    libraries = [e for e in (sysroot, musl.path.parent if musl is not None else None) if e]
    tc = toolchain(settings, gcc_include, sysroot, musl, cache.root)
    probe = tc.flags()
    deps: list[Dep] = []
    if settings.deps or (settings.make is not None and settings.make.configure is not None):
        if settings.mode == "ukl":  # configure's checks run programs: see ukl_build.deps
            user = dataclasses.replace(settings, mode="user")
            user_musl = build_musl(user, version, ctx)
            libraries.append(user_musl.path.parent)
            probe = toolchain(user, gcc_include, None, user_musl, cache.root).flags()
        # Without the project's own path (-ffile-prefix-map): one build per toolchain
        # serves every project.
        project_map = prefix_map(settings)
        deps = build_deps(settings, DepToolchain(probe.without(project_map),
                                                 tc.flags().without(project_map),
                                                 lambda: _check_libraries(libraries, cache)),
                          ctx)
        include, lib = dep_flags(deps)
        tc = Toolchain(tc.cc, (*tc.cflags, *include), (*tc.ldflags, *lib), tc.ldlibs)
        probe = probe.using(deps)
    source = _fetched_source(settings, cache, reporter)
    generated, tc = _generated(settings, build_dir, ctx, tc)

    # Without the cache's or the project's path: the work directory's name (which make and
    # CMake builds record) is then the same wherever the cache and the project are.
    def portable(value: object) -> str:
        return (repr(value).replace(str(cache.root), CACHE_PREFIX)
                .replace(str(settings.project_dir), "."))

    config_key = digest("app-config", APP_FORMAT, settings.mode, settings.libc, settings.sources,
                        settings.make, settings.cmake, portable(tc), version, portable(sysroot),
                        directory_digest(runtime_dir()), portable(probe),
                        [portable(d.key) for d in deps])
    inputs_key = digest(config_key, directory_digest(settings.project_dir, _SKIP_DIRS),
                        source.origin if source is not None else None,
                        generated_key(generated))
    return AppPlan(tc, probe, version, musl, source, tuple(deps), tuple(libraries),
                   _root(settings, source), build_dir / "app" / config_key[:16], inputs_key,
                   generated)


def _generated(settings: Settings, build_dir: Path, ctx: BuildContext,
               tc: Toolchain) -> tuple[tuple[Generated, ...], Toolchain]:
    """The generators run (or reused), and the toolchain with their directories on its
    include path."""
    generated = tuple(generate(settings, build_dir, ctx))
    includes = tuple(f"-I{g.directory}" for g in generated)
    return generated, Toolchain(tc.cc, (*tc.cflags, *includes), tc.ldflags, tc.ldlibs)


def _root(settings: Settings, source: AppSource | None) -> Path:
    """The tree the app is built from: the fetched source's, else the project's."""
    return source.path if source is not None else settings.project_dir


def _check_libraries(libraries: list[Path], cache: Cache) -> None:
    """Before a compile reads them: the C library entries hashed against their records."""
    for entry in libraries:
        cache.check_entry(entry.parent.name, entry.name, "content")


def _fetched_source(settings: Settings, cache: Cache, reporter: Reporter) -> AppSource | None:
    """The source tree ``[tool.ukl-build.make|cmake] source`` names, fetched; None when
    the app is built from the project itself."""
    for table, build in (("make", settings.make), ("cmake", settings.cmake)):
        if build is not None and build.source is not None:
            return fetch_app_source(build.source, settings.origin(f"{table}.source"),
                                    settings.project_dir, cache, reporter)
    return None


def _execute(plan: AppPlan, settings: Settings, ctx: BuildContext) -> AppBinary:
    """Compile the app as planned, in its work directory, and record what was made."""
    cache, reporter, env = ctx.cache, ctx.reporter, ctx.env
    app_dir = plan.app_dir
    record = app_dir / APP_RECORD
    if not record.is_file() and app_dir.exists():
        shutil.rmtree(app_dir)  # a build that did not finish: its make state is unknown
    record.unlink(missing_ok=True)
    app_dir.mkdir(parents=True, exist_ok=True)
    output = app_dir / "init"
    _check_libraries(list(plan.libraries), cache)
    if plan.source is not None:
        plan.source.check(cache)

    if settings.sources:
        _compile_sources(settings, plan, output, ctx)
    elif settings.make is not None:
        _build_make(settings, plan, output, ctx)
    else:
        _build_cmake(settings, plan, output, ctx)

    marker = b""
    if settings.mode == "ukl":
        output, marker = ukl_archive(output, app_dir, reporter, env,
                                     musl_start=settings.libc == "musl")
    else:
        check_static_elf(output, reporter)
    app = _binary(plan, settings, output, file_sha256(output), marker)
    atomic_write_text(record, json.dumps({"key": plan.inputs_key, "output": output.name,
                                          "sha256": app.sha256, "marker": marker.hex()}))
    return app


def _binary(plan: AppPlan, settings: Settings, output: Path, sha256: str,
            marker: bytes) -> AppBinary:
    return AppBinary(output, sha256, settings.libc, plan.version, settings.mode, marker,
                     plan.source.origin if plan.source is not None else None,
                     _libc_source(plan.musl), tuple(d.record() for d in plan.deps))


def _compile_sources(settings: Settings, plan: AppPlan, output: Path,
                     ctx: BuildContext) -> None:
    """``sources = [...]`` and the generators' .c outputs: one compiler run."""
    reporter, env, tc = ctx.reporter, ctx.env, plan.tc
    srcs = []
    for s in settings.sources:
        p = (settings.project_dir / s).resolve()
        if p.is_dir():
            raise BuildError(f"{settings.origin('sources')}: {s} is a directory ({p}); list "
                             "the files to compile, e.g. \"src/main.c\"")
        if not p.is_file():
            raise BuildError(f"{settings.origin('sources')}: {s} does not exist ({p})")
        srcs.append(p)
    srcs += [p for g in plan.generated for p in g.sources]
    what = f"{', '.join(settings.sources)} ({settings.libc}, {settings.mode} mode)"
    reporter.stage("app", f"compiling {what}")
    reporter.run(
        [tc.cc, *tc.cflags, *tc.ldflags, "-o", output, *srcs, *tc.ldlibs],
        step="app compile", cwd=settings.project_dir, env=env,
    )


def _build_make(settings: Settings, plan: AppPlan, output: Path, ctx: BuildContext) -> None:
    """``[tool.ukl-build.make]``: configure once, then make in a synced copy of the tree."""
    reporter, env = ctx.reporter, ctx.env
    root = plan.root
    tc, probe, deps, app_dir = plan.tc, plan.probe, list(plan.deps), plan.app_dir
    assert settings.make is not None
    configure = settings.make.configure
    work = app_dir / "src"
    # make works in its own copy, incrementally.  A fetched (verified) tree is
    # copied whole: only the project has build outputs and tool dirs to leave out.
    changed = sync_tree(root, work, frozenset() if plan.source is not None else _SKIP_DIRS)
    mdir = work / settings.make.dir
    known = prefixes(deps)
    if configure is not None and not (app_dir / "configured").is_file():
        reporter.stage("app", f"configure in {settings.make.dir}")
        reporter.run(["./configure", *(_substitute(a, known, plan) for a in configure)],
                     step="app configure", cwd=mdir, env=dict(env, **probe.env()))
        (app_dir / "configured").write_text("")
    margs = [_substitute(a, known, plan) for a in settings.make.args]
    if configure is not None:  # make's command line beats what configure recorded
        menv, margs = env, [*tc.flags().make_vars(), *margs]
    else:  # plain Makefiles take them from the environment (Redis adds its own)
        menv = dict(env, CC=tc.cc, CFLAGS=" ".join(tc.cflags), LDFLAGS=" ".join(tc.ldflags),
                    LDLIBS=" ".join(tc.ldlibs))
    reporter.stage("app", f"make in {settings.make.dir} ({settings.libc}, {settings.mode} mode, "
                   f"{changed} changed file{'s' if changed != 1 else ''})")
    reporter.run(["make", "-C", mdir, f"-j{os.cpu_count() or 1}", *margs],
                 step="app build (make)", env=menv)
    produced = mdir / settings.make.output
    if not produced.is_file():
        raise BuildError(f"{settings.origin('make.output')}: make did not produce "
                         f"{settings.make.output}")
    shutil.copyfile(produced, output)
    shutil.copymode(produced, output)


def _substitute(arg: str, deps: dict[str, Path], plan: AppPlan) -> str:
    """``{deps.NAME}`` and ``{generated.NAME}`` in a make or configure argument."""
    return substitute_generated(substitute_deps(arg, deps), generated_dirs(plan.generated))


def _libc_source(musl: MuslSysroot | None) -> dict[str, Any] | None:
    return None if musl is None else {"name": "musl", "version": musl.version, **musl.origin}


def _reuse(plan: AppPlan, settings: Settings) -> AppBinary | None:
    """The last build's output if its record names these inputs and the file is intact."""
    try:
        record = json.loads((plan.app_dir / APP_RECORD).read_text())
        output = plan.app_dir / record["output"]
        if record["key"] != plan.inputs_key or file_sha256(output) != record["sha256"]:
            return None
        marker = bytes.fromhex(record["marker"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _binary(plan, settings, output, record["sha256"], marker)


def sync_tree(root: Path, work: Path, skip: frozenset[str] = _SKIP_DIRS) -> int:
    """Make ``work`` a copy of ``root`` (less build outputs) by content; return files written.

    Files whose bytes changed are rewritten, so they are newer than what make
    built from them; unchanged files keep their times, so make rebuilds only
    what changed.  New files keep the times they have in ``root`` (a tarball's
    generated files stay newer than their inputs).  Files that left ``root``
    are removed (only those we copied: make's outputs stay).
    """
    listing = work.parent / (work.name + ".files")
    previous = set(listing.read_text().splitlines()) if listing.is_file() else set()
    current: set[str] = set()
    written = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in filenames:
            src = Path(dirpath) / name
            rel = str(src.relative_to(root))
            current.add(rel)
            written += _sync_file(src, work / rel)
    for rel in previous - current:
        (work / rel).unlink(missing_ok=True)
    atomic_write_text(listing, "\n".join(sorted(current)))
    return written


def _sync_file(src: Path, dest: Path) -> int:
    """Make ``dest`` what ``src`` is (a link or a file's bytes and mode); 1 if written."""
    if src.is_symlink():
        if dest.is_symlink() and os.readlink(dest) == os.readlink(src):
            return 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        dest.symlink_to(os.readlink(src))
        return 1
    fresh = not dest.exists() and not dest.is_symlink()
    if not fresh and dest.is_file() and not dest.is_symlink() and _same_bytes(src, dest):
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    if fresh:  # keeps the source's times: a tarball's generated files stay newer
        shutil.copy2(src, dest)  # than their inputs (no autoreconf by make)
    else:
        shutil.copyfile(src, dest)
        shutil.copymode(src, dest)
    return 1


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def _build_cmake(settings: Settings, plan: AppPlan, output: Path, ctx: BuildContext) -> None:
    reporter, env = ctx.reporter, ctx.env
    root, tc, app_dir = plan.root, plan.tc, plan.app_dir
    cm = settings.cmake
    assert cm is not None
    cmake = shutil.which("cmake", path=env.get("PATH"))
    ninja = shutil.which("ninja", path=env.get("PATH"))
    if not cmake or not ninja:
        raise BuildError("[tool.ukl-build] cmake: cmake and ninja are needed",
                         hint="pip install cmake ninja (pip wheel/build install them for you)")
    toolchain_file = app_dir / "toolchain.cmake"
    text = (
        "set(CMAKE_SYSTEM_NAME Linux)\n"
        "set(CMAKE_SYSTEM_PROCESSOR x86_64)\n"
        f'set(CMAKE_C_COMPILER "{tc.cc}")\n'
        f'set(CMAKE_C_FLAGS_INIT "{" ".join(tc.cflags)}")\n'
        f'set(CMAKE_EXE_LINKER_FLAGS_INIT "{" ".join(tc.ldflags)}")\n'
        f'set(CMAKE_C_STANDARD_LIBRARIES "{" ".join(tc.ldlibs)}")\n'
        "set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)\n"
    )
    if not toolchain_file.is_file() or toolchain_file.read_text() != text:
        toolchain_file.write_text(text)  # rewritten only when it changes: CMake tracks it
    src = (root / cm.source_dir).resolve()
    bdir = app_dir / "cmake"
    reporter.stage("app", f"cmake + ninja, target {cm.target} ({settings.libc}, {settings.mode} mode)")
    reporter.run([cmake, "-S", src, "-B", bdir, "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
                  f"-DCMAKE_TOOLCHAIN_FILE={toolchain_file}", "-DCMAKE_BUILD_TYPE=MinSizeRel",
                  *(substitute_generated(a, generated_dirs(plan.generated)) for a in cm.args)],
                 step="app configure (cmake)", env=env)
    reporter.run([cmake, "--build", bdir, "--target", cm.target], step="app build (cmake)", env=env)
    candidates = [p for p in bdir.rglob(cm.target) if p.is_file() and os.access(p, os.X_OK)]
    if not candidates:
        raise BuildError(f"[tool.ukl-build.cmake] target: no executable {cm.target!r} in {bdir}")
    shutil.copy2(candidates[0], output)


