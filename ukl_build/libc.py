"""musl, built once per source and toolchain and cached: ``libc = "musl"``.

The source comes through the same verified fetch as everything else
(``[tool.ukl-build.musl]``: Debian's ``musl`` source package by default, or
a URL + sha256, a path, a git revision).  The result is a sysroot
(``include/``, ``lib/`` with ``libc.a`` and the crt objects) in the cache;
:func:`musl_toolchain_flags` turns it into compiler and linker flags that
make and CMake builds get through CC/CFLAGS/LDFLAGS/LDLIBS, so third-party
build systems need no edits.

User mode only for now: in ring 0 every ``syscall`` instruction in musl
(its inline wrappers and the thread, clone and cancellation assembly) would
have to become a call of the kernel's ``ukl_syscall()``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ukl_build.cache import Cache, digest
from ukl_build.errors import BuildError
from ukl_build.progress import Reporter
from ukl_build.settings import Settings
from ukl_build.source import fetch_app_source


@dataclass(frozen=True)
class MuslSysroot:
    path: Path  # include/ and lib/
    origin: dict[str, object]  # where the source came from, with its digest
    version: str


def build_musl(settings: Settings, compiler: str, cache: Cache, reporter: Reporter,
               env: dict[str, str]) -> MuslSysroot:
    source = fetch_app_source(settings.musl, settings.origin("musl"), settings.project_dir,
                              cache, reporter)
    version_file = source.path / "VERSION"
    if not version_file.is_file() or not (source.path / "configure").is_file():
        raise BuildError(f"{settings.origin('musl')}: {source.path} is not a musl source tree "
                         "(no VERSION or configure)")
    version = version_file.read_text().strip()
    cc = env.get("UKL_CC", "gcc")
    key = digest("musl", 1, source.origin, compiler, cc)

    def make(tmp: Path) -> None:
        reporter.stage("libc", f"building musl {version} (once per source and compiler)")
        work = tmp / "src"
        shutil.copytree(source.path, work, symlinks=True)  # configure and make write here
        jobs = str(os.cpu_count() or 1)
        cflags = f"-O2 -g0 -ffile-prefix-map={work}=musl-{version}"
        reporter.run(["./configure", f"--prefix={tmp / 'sysroot'}", "--disable-shared",
                      f"CC={cc}", f"CFLAGS={cflags}"],
                     step="libc (musl configure)", cwd=work, env=env)
        reporter.run(["make", f"-j{jobs}"], step="libc (musl make)", cwd=work, env=env)
        reporter.run(["make", "install"], step="libc (musl make install)", cwd=work, env=env)
        shutil.rmtree(work)
        # Paths inside the install name its temporary prefix; nothing here uses them.
        for stale in ("bin", "lib/musl-gcc.specs"):
            target = tmp / "sysroot" / stale
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)

    entry = cache.entry("libcs", key, make)
    return MuslSysroot(entry / "sysroot", source.origin, version)


def gcc_file(cc: str, name: str) -> str:
    """A file of the compiler's own installation (its include dir, crtbeginT.o, ...)."""
    proc = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"app: {cc} -print-file-name={name} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def musl_toolchain_flags(cc: str, sysroot: Path) -> tuple[list[str], list[str], list[str]]:
    """(cflags, ldflags, ldlibs) for a static, non-PIE program on musl alone."""
    lib = sysroot / "lib"
    cflags = ["-nostdinc", "-isystem", str(sysroot / "include"),
              "-isystem", gcc_file(cc, "include"), "-fno-pie"]
    ldflags = ["-static", "-no-pie", "-nostdlib", "-nostartfiles", f"-L{lib}",
               str(lib / "crt1.o"), str(lib / "crti.o"), gcc_file(cc, "crtbeginT.o")]
    ldlibs = ["-Wl,--start-group", "-lc", "-lgcc", "-lgcc_eh", "-Wl,--end-group",
              gcc_file(cc, "crtend.o"), str(lib / "crtn.o")]
    return cflags, ldflags, ldlibs
