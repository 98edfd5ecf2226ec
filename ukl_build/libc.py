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

from ukl_build.cache import Cache, atomic_write_text, digest
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


def musl_specs(sysroot: Path) -> Path:
    """A GCC specs file that makes ``gcc`` compile and link against this musl alone.

    Flags in CFLAGS/LDFLAGS are not enough: build systems such as Redis's put
    their own libraries last and never pass LDLIBS, so the C library, libgcc
    and the start and end files must come from the compiler driver itself.
    Written beside the cache entry (entries are immutable once renamed into
    place); the text depends only on the entry's path, so concurrent writers
    agree.
    """
    lib = sysroot / "lib"
    # Only plain overrides (no %rename): make rules pass CFLAGS and LDFLAGS
    # together, so the file is often read twice in one command.
    text = "\n".join([
        "*link_libgcc:", f"-L{lib} -L .%s", "",
        "*libgcc:", "libgcc.a%s %:if-exists(libgcc_eh.a%s)", "",
        "*startfile:", f"{lib}/crt1.o {lib}/crti.o crtbeginT.o%s", "",
        "*endfile:", f"crtend.o%s {lib}/crtn.o", "",
        "*link:", "-nostdlib -static %{rdynamic:-export-dynamic}", "",
    ])
    entry = sysroot.parent
    specs = entry.parent / f"{entry.name}.specs"
    if not specs.is_file() or specs.read_text() != text:
        atomic_write_text(specs, text)
    return specs


def musl_toolchain_flags(cc: str, sysroot: Path) -> tuple[list[str], list[str], list[str]]:
    """(cflags, ldflags, ldlibs) for a static, non-PIE program on musl alone."""
    specs = f"-specs={musl_specs(sysroot)}"
    cflags = ["-nostdinc", "-isystem", str(sysroot / "include"),
              "-isystem", gcc_file(cc, "include"), "-fno-pie"]
    return [*cflags, specs], [specs, "-static", "-no-pie"], []


def gcc_file(cc: str, name: str) -> str:
    """A file of the compiler's own installation (its include directory, say)."""
    proc = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"app: {cc} -print-file-name={name} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()
