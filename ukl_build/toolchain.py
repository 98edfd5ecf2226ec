"""The app's compiler and flags: which compiler, its version, the hardening flags a
mode asks for, and the flags of each libc and mode (a plan: nothing is compiled here)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ukl_build.deps import Flags
from ukl_build.errors import BuildError
from ukl_build.libc import UKL_CODEGEN, MuslSysroot, musl_toolchain_flags
from ukl_build.progress import Reporter
from ukl_build.resources import runtime_dir
from ukl_build.settings import Settings


@dataclass(frozen=True)
class Toolchain:
    cc: str
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...]
    ldlibs: tuple[str, ...]

    def flags(self) -> Flags:
        return Flags(self.cc, self.cflags, (*self.ldflags, *self.ldlibs))


def compiler_version(cc: str, reporter: Reporter) -> str:
    try:
        out = reporter.capture([cc, "--version"], step="app (the C compiler's version)").text
    except BuildError as e:
        raise BuildError(f"app: C compiler {cc!r} not usable: {e}", hint="apt-get install gcc") from None
    return out.splitlines()[0]


def app_hardening(settings: Settings, sysroot: Path | None = None) -> tuple[list[str], list[str]]:
    """(cflags, ldflags) that harden the app as ``hardened`` asks (docs/security.md).

    Hardened: canaries in functions with arrays or address-taken locals, stack-clash
    probes, and glibc's _FORTIFY_SOURCE (musl and nolibc have no fortified headers).
    Canaries need a guard and a failure handler: UKL-mode code (kernel code model)
    checks the kernel's per-CPU canary and calls the kernel's ``__stack_chk_fail``
    (see ``_ukl_archive``); musl and glibc set up their own in user mode; nolibc sets
    up none before 6.12's, so a user-mode nolibc app keeps its guard in a global that
    ukl_ssp.h's entry stub fills from AT_RANDOM before nolibc's ``_start``; newer nolibc
    (``stackprotector.h`` in the ``sysroot``) fills its own global guard and has its own
    handler.
    """
    if not settings.hardened:
        return ["-fno-stack-protector"], []
    cflags = ["-fstack-protector-strong"]
    if settings.mode == "user":  # UKL mode always probes (toolchain)
        cflags.append("-fstack-clash-protection")
    if settings.libc == "glibc":
        cflags.append("-D_FORTIFY_SOURCE=2")
    if settings.libc == "nolibc" and settings.mode == "user":
        if sysroot is not None and (sysroot / "include" / "stackprotector.h").is_file():
            return [*cflags, "-mstack-protector-guard=global"], []
        ssp = runtime_dir() / "include" / "ukl_ssp.h"
        return ([*cflags, "-mstack-protector-guard=global", "-include", str(ssp)],
                ["-Wl,-e,__ukl_ssp_start"])
    return cflags, []


def compiler() -> str:
    return os.environ.get("UKL_CC", "gcc")


def prefix_map(settings: Settings) -> str:
    """Debug info and __FILE__ name the project's files relative to it."""
    return f"-ffile-prefix-map={settings.project_dir}=."


CACHE_PREFIX = "/ukl-build-cache"  # what the cache's path becomes in debug information


def toolchain(settings: Settings, gcc_include: str, sysroot: Path | None,
              musl: MuslSysroot | None = None, cache_root: Path | None = None) -> Toolchain:
    """The compiler and flags of the app (``gcc_include``: the compiler's own include
    directory).  Paths into the project and the cache are mapped to fixed names
    (-ffile-prefix-map), so an app that adds its own -g (Redis does) does not record
    where it was built."""
    cc = compiler()
    maps = [prefix_map(settings)]
    if cache_root is not None:
        maps.append(f"-ffile-prefix-map={cache_root}={CACHE_PREFIX}")
    common = ["-O2", "-g0", "-fno-asynchronous-unwind-tables", "-fno-ident", *maps]
    hard_cflags, hard_ldflags = app_hardening(settings, sysroot)
    common += hard_cflags
    if settings.libc == "glibc":
        return Toolchain(cc, (*common, *settings.cflags), ("-static", *hard_ldflags), ())
    ukl = ["-fstack-clash-protection", "-DUKL_MODE=1"] if settings.mode == "ukl" else []
    if settings.libc == "musl":
        assert musl is not None
        cflags, ldflags, ldlibs = musl_toolchain_flags(gcc_include, musl)
        return Toolchain(cc, (*common, *cflags, *ukl, *settings.cflags),
                         (*ldflags, *hard_ldflags), tuple(ldlibs))
    assert sysroot is not None
    cflags = [
        *common, "-std=gnu11", "-fno-pie", "-nostdinc",
        "-isystem", str(runtime_dir() / "include"),
        "-isystem", str(sysroot / "include"),
        "-isystem", gcc_include,
    ]
    if settings.mode == "ukl":
        # Kernel code model (libc.UKL_CODEGEN).  Stack-clash probes touch every page a
        # big frame allocates, so an overflow hits the stack's guard page (and is
        # reported as such) instead of jumping it.
        cflags += [*UKL_CODEGEN, *ukl]
        if settings.uses_shortcuts:  # see runtime/ukl/arch.h and kernel patch "shortcut entry points"
            cflags.append("-DUKL_SHORTCUTS=1")
        lds = runtime_dir() / "ukl" / "app.lds"
        # The "executable" of a UKL app is one relocatable object (gcc -r).
        return Toolchain(cc, (*cflags, *settings.cflags),
                         ("-nostdlib", "-r", f"-Wl,-T,{lds}", "-Wl,--build-id=none"), ("-lgcc",))
    return Toolchain(cc, (*cflags, *settings.cflags),
                     ("-static", "-no-pie", "-nostdlib", *hard_ldflags), ("-lgcc",))
