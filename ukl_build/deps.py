"""Stage 4a: libraries the app links (``[tool.ukl-build.deps.NAME]``), built from source.

Each dependency is fetched and verified like any app source, configured,
built and installed into its own cache entry (``deps/``), keyed by its
source, its arguments, the toolchain and the dependencies built before it:
once per toolchain, shared by every project that asks for the same thing.

Autotools ``configure`` checks link and run small programs.  A UKL-mode
"executable" is a relocatable object that links whatever is undefined and
cannot run, so those checks would all pass or all fail; they run with the
user-mode toolchain of the same libc instead (same headers, same
functions), and ``make`` then compiles with the mode's own flags, given on
make's command line so that they replace what configure recorded.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ukl_build.context import BuildContext
from ukl_build.errors import BuildError
from ukl_build.files import digest
from ukl_build.settings import DepSettings, Settings, substitute_deps
from ukl_build.source import fetch_app_source

DEPS_FORMAT = 1  # bump when a dependency build changes what it makes from the same inputs


@dataclass(frozen=True)
class Flags:
    """What a compiler invocation needs: the compiler and its C and link flags."""

    cc: str
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...]

    def env(self) -> dict[str, str]:
        """For configure: CC, CFLAGS and LDFLAGS as environment variables."""
        return {"CC": self.cc, "CFLAGS": " ".join(self.cflags), "LDFLAGS": " ".join(self.ldflags)}

    def make_vars(self) -> list[str]:
        """For make: the same as command-line variables, which override the Makefile's."""
        return [f"{k}={v}" for k, v in self.env().items()]

    def without(self, flag: str) -> Flags:
        return Flags(self.cc, tuple(f for f in self.cflags if f != flag), self.ldflags)

    def adding(self, *cflags: str) -> Flags:
        return Flags(self.cc, (*self.cflags, *cflags), self.ldflags)

    def using(self, deps: Sequence[Dep]) -> Flags:
        """These flags plus -I and -L for each dependency."""
        include, lib = dep_flags(deps)
        return Flags(self.cc, (*self.cflags, *include), (*self.ldflags, *lib))


@dataclass(frozen=True)
class Dep:
    name: str
    prefix: Path  # include/, lib/ (a cache entry: immutable)
    key: str
    origin: dict[str, Any]  # where its source came from, with its digest

    def record(self) -> dict[str, Any]:
        """For the manifest and the SBOM."""
        return {"name": self.name, **self.origin}


def dep_flags(deps: Sequence[Dep]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(-I flags, -L flags) for the dependencies' include/ and lib/."""
    return (tuple(f"-I{d.prefix / 'include'}" for d in deps),
            tuple(f"-L{d.prefix / 'lib'}" for d in deps))


def prefixes(deps: Sequence[Dep]) -> dict[str, Path]:
    return {d.name: d.prefix for d in deps}


@dataclass(frozen=True)
class DepToolchain:
    """What dependencies are built with: the flags configure's checks run with (they
    run programs, so user mode's), the flags they are compiled with, and a check that
    runs before a dependency is built (of the C library the compiles read)."""

    probe: Flags
    build: Flags
    ready: Callable[[], None]

    def using(self, deps: Sequence[Dep]) -> DepToolchain:
        return DepToolchain(self.probe.using(deps), self.build.using(deps), self.ready)


def build_deps(settings: Settings, tools: DepToolchain, ctx: BuildContext) -> list[Dep]:
    """Build each of ``[tool.ukl-build.deps]`` in order; each later one sees the earlier
    ones."""
    done: list[Dep] = []
    for name, spec in settings.deps.items():
        done.append(_build_one(name, spec, settings, tools.using(done), tuple(done), ctx))
    return done


def _build_one(name: str, spec: DepSettings, settings: Settings, tools: DepToolchain,
               earlier: tuple[Dep, ...], ctx: BuildContext) -> Dep:
    cache, reporter, env = ctx.cache, ctx.reporter, ctx.env
    origin, probe, build, ready = settings.origin, tools.probe, tools.build, tools.ready
    where = origin(f"deps.{name}.source")
    source = fetch_app_source(spec.source, where, settings.project_dir, cache, reporter)
    if not (source.path / "configure").is_file():
        raise BuildError(f"{where}: {source.path} has no configure script; dependencies are "
                         "built with configure, make, make install")
    known = prefixes(earlier)
    configure = [substitute_deps(a, known) for a in spec.configure]
    make_args = [substitute_deps(a, known) for a in spec.make_args]
    key = digest("dep", DEPS_FORMAT, name, source.origin, configure, make_args, probe, build,
                 [d.key for d in earlier])
    jobs = f"-j{os.cpu_count() or 1}"

    def make(tmp: Path) -> None:
        ready()
        reporter.stage("deps", f"building {name} (once per source, toolchain and arguments)")
        work = tmp / "src"
        source.check(cache)
        shutil.copytree(source.path, work, symlinks=True)  # keeps times: no autoreconf
        src_map = f"-ffile-prefix-map={work}={name}"  # no temporary path in the objects
        conf, comp = probe.adding(src_map), build.adding(src_map)
        # Installed under DESTDIR with prefix "/": nothing built here names the
        # cache path, which changes when the entry is renamed into place.
        reporter.run(["./configure", "--prefix=/", *configure], step=f"deps ({name} configure)",
                     cwd=work, env=dict(env, **conf.env()))
        reporter.run(["make", jobs, *comp.make_vars(), *make_args],
                     step=f"deps ({name} make)", cwd=work, env=env)
        prefix = tmp / "prefix"
        reporter.run(["make", "install", f"DESTDIR={prefix}", *comp.make_vars(), *make_args],
                     step=f"deps ({name} make install)", cwd=work, env=env)
        shutil.rmtree(work)
        # libtool archives and pkg-config files name the prefix "/": wrong for a
        # consumer, who gets -I/-L (and {deps.NAME}) instead.
        for stale in [*prefix.rglob("*.la"), prefix / "lib" / "pkgconfig"]:
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink(missing_ok=True)
        if not (prefix / "lib").is_dir():
            raise BuildError(f"{origin(f'deps.{name}')}: make install put no lib/ into the "
                             "prefix")

    entry = cache.entry("deps", key, make)
    return Dep(name, entry / "prefix", key, source.origin)
