"""The app as the kernel links it (UKL mode): every symbol prefixed so none clashes with
the kernel's, the system call bridge bound, a marker section, one archive; and the
checks of what a build made (an ELF of the right kind, static where it must be)."""

from __future__ import annotations

from pathlib import Path

from ukl_build.errors import BuildError
from ukl_build.files import file_sha256
from ukl_build.progress import Reporter

# Symbols of the app that must bind to the kernel: app-side name -> kernel name.
UKL_BRIDGE = {"__ukl_syscall": "ukl_syscall", "__ukl_clone_thread": "ukl_clone_thread",
              # musl's clock_gettime() (libc patch 0006; kernel patch 0018)
              "__ukl_clock_gettime": "ukl_clock_gettime",
              # an app's IPv4 packet filter (kernel patch 0026, CONFIG_NETFILTER)
              "__ukl_filter_ipv4": "ukl_filter_ipv4",
              # shortcuts (kernel patches 0012 and 0023; musl patches 0005 and 0007)
              **{f"__ukl_sc_{c}": f"ukl_sc_{c}" for c in (
                  "getppid", "read", "write", "sendto", "recvfrom", "accept4", "sendmsg",
                  "recvmsg", "readv", "writev", "epoll_wait", "epoll_ctl")}}
UKL_PREFIX = "ukl_app_"  # no kernel symbol starts with it (see CONFIG_UKL)

# The stack protector's failure handler: in UKL mode the kernel's (its canary, %gs:40,
# is the one kernel-code-model code checks), even where musl brings its own.
STACK_CHK_FAIL = "__stack_chk_fail"
MARKER_SECTION = ".rodata.ukl_build_app"


def ukl_archive(obj: Path, app_dir: Path, reporter: Reporter,
                env: dict[str, str], musl_start: bool = False) -> tuple[Path, bytes]:
    """Prefix every app symbol (no clash with the kernel's), bind the bridge, archive.

    The kernel calls ``ukl_app_main``: the app's ``main`` with nolibc; with
    musl, its start code (``musl_start.c``), which calls ``main`` through
    musl's ``__libc_start_main``, so the two names trade places.
    """
    _check_elf(obj, et_rel=True)
    if "main" not in _defined(obj, reporter, env):  # else: "undefined reference to ukl_app_main",
        raise BuildError(                 # late, in the kernel's link
            "app: the app defines no main() (its sources compiled to an object without one)",
            hint="the kernel starts the app at its main(); check that the sources define it")
    prefixed = app_dir / "app-ukl.o"
    # The assembler names _GLOBAL_OFFSET_TABLE_ (undefined) in any object with TLS
    # relocations; local-exec code uses no GOT, so nothing refers to it (objcopy
    # refuses to strip a symbol a relocation names).
    reporter.run(["objcopy", "--strip-symbol=_GLOBAL_OFFSET_TABLE_", obj, prefixed],
                 step="app (objcopy --strip-symbol)", env=env)
    reporter.run(["objcopy", f"--prefix-symbols={UKL_PREFIX}", prefixed],
                 step="app (objcopy --prefix-symbols)", env=env)
    redefine = [f"--redefine-sym={UKL_PREFIX}{a}={k}" for a, k in UKL_BRIDGE.items()]
    # Canary failures go to the kernel's handler, which panics naming the function.
    # musl defines its own (it would halt the CPU): weakened, so the kernel's wins.
    redefine.append(f"--redefine-sym={UKL_PREFIX}{STACK_CHK_FAIL}={STACK_CHK_FAIL}")
    if musl_start:
        redefine += [f"--redefine-sym={UKL_PREFIX}main={UKL_PREFIX}main_",
                     f"--redefine-sym={UKL_PREFIX}__ukl_start={UKL_PREFIX}main"]
    reporter.run(["objcopy", *redefine, prefixed], step="app (objcopy --redefine-sym)", env=env)
    if STACK_CHK_FAIL in _defined(prefixed, reporter, env):
        reporter.run(["objcopy", f"--weaken-symbol={STACK_CHK_FAIL}", prefixed],
                     step="app (objcopy --weaken-symbol)", env=env)
    # Weak references may stay unresolved (0 in vmlinux: musl tests _DYNAMIC that way);
    # with the prefix they cannot bind to a kernel symbol by accident.
    undefined = sorted(_undefined(prefixed, reporter, env) - {*UKL_BRIDGE.values(), STACK_CHK_FAIL})
    if undefined:
        names = ", ".join(u.removeprefix(UKL_PREFIX) for u in undefined)
        raise BuildError(f"app: undefined symbols after linking the app with its libc: {names}",
                         hint="a UKL app links only against its libc (nolibc or musl), "
                              "ukl-build's runtime and libgcc")
    # The object's digest, as a string in .rodata: the kernel build checks that
    # vmlinux and the bzImage hold it before it caches or ships them.
    marker = f"ukl-build app {file_sha256(prefixed)}".encode()
    marker_file = app_dir / "app-id"
    marker_file.write_bytes(marker + b"\0")
    reporter.run(["objcopy", f"--add-section={MARKER_SECTION}={marker_file}",
                  f"--set-section-flags={MARKER_SECTION}=alloc,load,readonly,data", prefixed],
                 step="app (objcopy --add-section)", env=env)
    archive = app_dir / "ukl-app.a"
    archive.unlink(missing_ok=True)
    reporter.run(["ar", "rcsD", archive, prefixed], step="app (ar)", env=env)
    return archive, marker


def _nm(obj: Path, reporter: Reporter, env: dict[str, str], *args: str) -> list[list[str]]:
    """``nm``'s lines for an object, split into fields (a failed nm raises: an empty
    answer must not pass a check)."""
    out = reporter.capture(["nm", *args, obj], step=f"app (nm {' '.join(args)} {obj.name})",
                           env=env).text
    return [ln.split() for ln in out.splitlines() if ln.strip()]


def _undefined(obj: Path, reporter: Reporter, env: dict[str, str]) -> set[str]:
    """The object's strong undefined symbols."""
    return {f[-1] for f in _nm(obj, reporter, env, "-u") if f[:1] == ["U"]}


def _defined(obj: Path, reporter: Reporter, env: dict[str, str]) -> set[str]:
    """The object's defined symbols."""
    return {f[-1] for f in _nm(obj, reporter, env, "--defined-only") if len(f) >= 3}


def _check_elf(path: Path, et_rel: bool) -> None:
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF" or head[4] != 2 or int.from_bytes(head[18:20], "little") != 62:
        raise BuildError(f"app: {path.name} is not an x86-64 ELF file")
    e_type = int.from_bytes(head[16:18], "little")
    if et_rel and e_type != 1:
        raise BuildError(f"app: {path.name} is not a relocatable object (UKL apps link with -r)")
    if not et_rel and e_type != 2:
        raise BuildError(f"app: {path.name} is not a static executable")


def check_static_elf(path: Path, reporter: Reporter) -> None:
    _check_elf(path, et_rel=False)
    if "INTERP" in reporter.capture(["readelf", "-l", path],
                                    step=f"app (readelf -l {path.name})").text:
        raise BuildError(f"app: {path.name} is dynamically linked; the initramfs holds no loader",
                         hint="link statically (-static)")
