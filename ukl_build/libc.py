"""musl, built once per source, mode and toolchain and cached: ``libc = "musl"``.

The source comes through the same verified fetch as everything else
(``[tool.ukl-build.musl]``: Debian's ``musl`` source package by default, or
a URL + sha256, a path, a git revision).  The result is a sysroot
(``include/``, ``lib/`` with ``libc.a`` and the start files) in the cache;
:func:`musl_toolchain_flags` turns it into compiler and linker flags that
make and CMake builds get through CC/CFLAGS/LDFLAGS, with a GCC specs file
so that third-party build systems need no edits.

In UKL mode musl is patched first (``libc_patches/musl-<version>/``: every
``syscall`` instruction becomes a call of the kernel's ``ukl_syscall()``,
threads start through ``ukl_clone_thread()``; with ``shortcuts = true`` the
hottest calls go to the kernel's direct entry points) and compiled for the
kernel code model; its start file is ``runtime/ukl/musl_start.c``, and the
"executable" it links is the relocatable object a UKL app is.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ukl_build.context import BuildContext
from ukl_build.errors import BuildError
from ukl_build.files import atomic_write_text, digest, file_sha256
from ukl_build.patches import apply_series, read_series
from ukl_build.progress import Reporter
from ukl_build.resources import libc_patches_dir, runtime_dir
from ukl_build.settings import Mode, Settings
from ukl_build.source import fetch_app_source

# Code generation for ring 0, shared by musl and the apps built on it (appbuild):
# linked at kernel addresses (top 2 GiB); interrupts in ring 0 push their frames
# below %rsp, so no red zone; no CET landing pads or PIC; local-exec TLS, as
# vmlinux is linked like a static executable.
UKL_CODEGEN = ("-mcmodel=kernel", "-mno-red-zone", "-fno-pic", "-fno-pie", "-fcf-protection=none",
               "-ftls-model=local-exec")
UKL_START = "ukl_crt1.o"  # musl's start file in UKL mode, in the sysroot's lib/


@dataclass(frozen=True)
class MuslSysroot:
    path: Path  # include/ and lib/
    origin: dict[str, object]  # where the source came from, with its digest
    version: str
    mode: Mode


def build_musl(settings: Settings, compiler: str, ctx: BuildContext) -> MuslSysroot:
    """musl for ``settings.mode``, from ``settings.musl``."""
    cache, reporter, env = ctx.cache, ctx.reporter, ctx.env
    source = fetch_app_source(settings.musl, settings.origin("musl"), settings.project_dir,
                              cache, reporter)
    source.check_file(cache, "VERSION")  # the tree itself is checked before musl is built
    version_file = source.path / "VERSION"
    if not version_file.is_file() or not (source.path / "configure").is_file():
        raise BuildError(f"{settings.origin('musl')}: {source.path} is not a musl source tree "
                         "(no VERSION or configure)")
    version = version_file.read_text().strip()
    cc = env.get("UKL_CC", "gcc")
    mode = settings.mode
    series_dir = libc_patches_dir() / f"musl-{version}"
    patches = read_series(series_dir) if mode == "ukl" else []
    if mode == "ukl" and not patches:
        raise BuildError(f"{settings.origin('musl')}: musl {version} has no UKL patch series "
                         f"({series_dir})", hint="use Debian's musl (1.2.3), or user mode")
    start = runtime_dir() / "ukl" / "musl_start.c"
    codegen = UKL_CODEGEN if mode == "ukl" else ()
    # Shortcuts (UKL mode): the hottest calls go to the kernel's direct entry points
    # (patch "call the UKL kernel's shortcut entry points"), a separate build.
    if settings.uses_shortcuts:
        codegen = (*codegen, "-DUKL_SHORTCUTS=1")
    key = digest("musl", 2, source.origin, compiler, cc, mode, codegen,
                 [(p.name, p.sha256) for p in patches],
                 file_sha256(start) if mode == "ukl" else None)

    def make(tmp: Path) -> None:
        shortcuts = " with shortcuts" if settings.uses_shortcuts else ""
        reporter.stage("libc", f"building musl {version} for {mode} mode{shortcuts} "
                       "(once per source, mode and compiler)")
        work = tmp / "src"
        source.check(cache)
        shutil.copytree(source.path, work, symlinks=True)  # configure and make write here
        if patches:
            apply_series(work, patches, f"musl {version}", series_dir, reporter)
        jobs = str(os.cpu_count() or 1)
        cflags = " ".join(["-O2", "-g0", f"-ffile-prefix-map={work}=musl-{version}", *codegen])
        sysroot = tmp / "sysroot"
        reporter.run(["./configure", f"--prefix={sysroot}", "--disable-shared",
                      f"CC={cc}", f"CFLAGS={cflags}"],
                     step="libc (musl configure)", cwd=work, env=env)
        # In UKL mode musl's start files are not used (UKL_START replaces them), and
        # Scrt1.o, built -fPIC, cannot be compiled for the kernel code model.
        no_crt = ["CRT_LIBS="] if mode == "ukl" else []
        reporter.run(["make", f"-j{jobs}", *no_crt], step="libc (musl make)", cwd=work, env=env)
        reporter.run(["make", "install", *no_crt], step="libc (musl make install)", cwd=work,
                     env=env)
        shutil.rmtree(work)
        # Paths inside the install name its temporary prefix; nothing here uses them.
        for stale in ("bin", "lib/musl-gcc.specs"):
            target = sysroot / stale
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        if mode == "ukl":
            reporter.run([cc, "-O2", "-g0", "-fno-asynchronous-unwind-tables", "-fno-ident",
                          *codegen, "-nostdinc", "-isystem", str(sysroot / "include"),
                          "-isystem", gcc_file(cc, "include", reporter), "-c", start,
                          "-o", sysroot / "lib" / UKL_START],
                         step="libc (UKL start file)", env=env)

    # Checked when a compile is about to read it (appbuild), not when a build that
    # compiles nothing takes it.
    entry = cache.entry("libcs", key, make, check=False)
    return MuslSysroot(entry / "sysroot", source.origin, version, mode)


def musl_specs(musl: MuslSysroot) -> Path:
    """A GCC specs file that makes ``gcc`` compile and link against this musl alone.

    Flags in CFLAGS/LDFLAGS are not enough: build systems such as Redis's put
    their own libraries last and never pass LDLIBS, so the C library, libgcc
    and the start and end files must come from the compiler driver itself.
    In UKL mode the link is ``ld -r`` with the app's linker script: the
    driver does not see ``-r`` (it is inside the link spec), so it still adds
    the start file and the libraries.  Written beside the cache entry
    (entries are immutable once renamed into place); the text depends only on
    the entry's path, so concurrent writers agree.
    """
    lib = musl.path / "lib"
    if musl.mode == "ukl":
        lds = runtime_dir() / "ukl" / "app.lds"
        start, end = f"{lib}/{UKL_START}", ""
        link = f"-nostdlib -r -T {lds} --build-id=none"
    else:
        start, end = f"{lib}/crt1.o {lib}/crti.o crtbeginT.o%s", f"crtend.o%s {lib}/crtn.o"
        link = "-nostdlib -static %{rdynamic:-export-dynamic}"
    # Only plain overrides (no %rename): make rules pass CFLAGS and LDFLAGS
    # together, so the file is often read twice in one command.
    text = "\n".join([
        "*link_libgcc:", f"-L{lib} -L .%s", "",
        "*libgcc:", "libgcc.a%s %:if-exists(libgcc_eh.a%s)", "",
        "*startfile:", start, "",
        "*endfile:", end, "",
        "*link:", link, "",
    ])
    entry = musl.path.parent
    specs = entry.parent / f"{entry.name}.specs"
    if not specs.is_file() or specs.read_text() != text:
        atomic_write_text(specs, text)
    return specs


def musl_toolchain_flags(gcc_include: str,
                         musl: MuslSysroot) -> tuple[list[str], list[str], list[str]]:
    """(cflags, ldflags, ldlibs) for a program on musl alone (``gcc_include``: the
    compiler's own include directory): static in user mode, a relocatable object for
    the kernel code model in UKL mode."""
    specs = f"-specs={musl_specs(musl)}"
    cflags = ["-nostdinc", "-isystem", str(musl.path / "include"),
              "-isystem", gcc_include, "-fno-pie"]
    if musl.mode == "ukl":
        return [*cflags, *UKL_CODEGEN, specs], [specs, "-no-pie"], []
    return [*cflags, specs], [specs, "-static", "-no-pie"], []


def gcc_file(cc: str, name: str, reporter: Reporter) -> str:
    """A file of the compiler's own installation (its include directory, say)."""
    return reporter.capture([cc, f"-print-file-name={name}"],
                            step=f"app ({cc} -print-file-name={name})").text.strip()
