"""Stage 6: build the kernel out of tree, with the app built in.

One build directory (``make O=...``) per (tree, .config); apps that share a
kernel configuration share its objects, so switching apps only relinks.  The
app enters through fixed paths inside that directory (the initramfs list and,
in UKL mode, the app archive), so the .config does not depend on the app.
Images are copied to a content-addressed cache entry; a rebuild whose inputs
are all unchanged finds that entry and runs no make at all.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import re
import shutil
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ukl_build.appbuild import AppBinary
from ukl_build.cache import Cache
from ukl_build.compilers import Compiler, stats_line
from ukl_build.context import BuildContext
from ukl_build.errors import BuildError
from ukl_build.files import atomic_write_bytes, atomic_write_text, digest, file_sha256
from ukl_build.imagefiles import ShippedFile, initramfs_entries
from ukl_build.kconfig import KernelConfig
from ukl_build.patches import PatchedTree
from ukl_build.progress import Reporter
from ukl_build.records import RECORD
from ukl_build.resources import runtime_dir
from ukl_build.workdir import WorkDir

INITRAMFS_LIST = "ukl-initramfs.list"  # matches CONFIG_INITRAMFS_SOURCE in recipes/base.config
UKL_ARCHIVE = "ukl-app.a"  # matches CONFIG_UKL_ARCHIVE in recipes/ukl.config
USER_INIT = "ukl-root/init"
USER_ETC = "ukl-root/etc"
# root and nobody: a libc's user and group lookups (getpwnam: memcached -u) find them.
ETC_FILES = ("passwd", "group")
TREE_MARK = ".ukl-build-tree"  # the record digest of the tree copy the objects come from
# Everything in a build dir that depends on the app (linked from the archive,
# or packed from the initramfs list).  Removed before make whenever the dir's
# stamp does not name the payload at hand, so make rebuilds them because they
# are missing, never because of a timestamp.
PAYLOAD_OUTPUTS = (
    "vmlinux", "vmlinux.o", "vmlinux.a", "System.map", ".tmp_vmlinux*",
    "usr/initramfs_data.cpio", "usr/initramfs_inc_data", "usr/initramfs_data.o", "usr/built-in.a",
    "arch/x86/boot/bzImage", "arch/x86/boot/vmlinux.bin",
    "arch/x86/boot/zoffset.h", "arch/x86/boot/voffset.h",
    "arch/x86/boot/setup.bin", "arch/x86/boot/setup.elf", "arch/x86/boot/header.o",
    "arch/x86/boot/compressed/vmlinux*", "arch/x86/boot/compressed/piggy.*",
)
_STEP = re.compile(r"^\s{2}([A-Z][A-Z0-9_]*)\s+(\S+)")


@dataclass(frozen=True)
class KernelImages:
    bzimage: Path
    vmlinux: Path
    key: str
    built: bool  # False when the cache already held these exact images
    build_dir: Path  # the kernel build directory (O=) these images come from


@dataclass(frozen=True)
class Payload:
    """What the app puts into the kernel build: files placed at fixed paths in O=."""

    files: dict[str, Path]  # relative name in the build dir -> source file
    initramfs: str  # the gen_init_cpio list (paths relative to the build dir are resolved)
    expect: bytes  # bytes that vmlinux and the bzImage must contain once built with it


def initramfs_list(init_name: str | None, etc_dir: str = USER_ETC) -> str:
    """gen_init_cpio input: a console node (or the app's stdout goes nowhere), /etc's
    user and group files (from ``etc_dir``) and /init."""
    lines = ["dir /dev 0755 0 0", "nod /dev/console 0600 0 0 c 5 1",
             "nod /dev/null 0666 0 0 c 1 3", "nod /dev/zero 0666 0 0 c 1 5",
             "dir /proc 0755 0 0", "dir /tmp 01777 0 0", "dir /etc 0755 0 0",
             *(f"file /etc/{name} {etc_dir}/{name} 0644 0 0" for name in ETC_FILES)]
    if init_name is not None:
        lines.append(f"file /init {init_name} 0755 0 0")
    return "\n".join(lines) + "\n"


def payload_for(app: AppBinary, files: Sequence[ShippedFile] = ()) -> Payload:
    """UKL: the archive linked into vmlinux, the initramfs only gives it a console.
    User mode: the app is /init in the built-in initramfs.  ``files``: the project's
    own files, in the initramfs in both modes."""
    etc = {f"{USER_ETC}/{name}": runtime_dir() / "etc" / name for name in ETC_FILES}
    shipped, lines = initramfs_entries(list(files))
    listing = "".join(line + "\n" for line in lines)
    if app.mode == "ukl":
        return Payload({UKL_ARCHIVE: app.path, **etc, **shipped},
                       initramfs_list(None) + listing, app.marker)
    return Payload({USER_INIT: app.path, **etc, **shipped}, initramfs_list(USER_INIT) + listing,
                   app.path.read_bytes())


def reproducible_env(cache: Cache, source_date_epoch: int,
                     build_dir: Path | None = None) -> dict[str, str]:
    """The environment of every build step: fixed times, names, locale, ccache.

    Git stops looking for a repository at the cache and the project's build
    directory: a build run inside someone's checkout (ours, in development)
    must not take its commit (Redis's release.c records ``git rev-parse HEAD``).
    """
    env = dict(os.environ)
    ceilings = [str(cache.root), *([str(build_dir)] if build_dir is not None else [])]
    env.update(
        {
            "GIT_CEILING_DIRECTORIES": ":".join(ceilings),
            "SOURCE_DATE_EPOCH": str(source_date_epoch),
            "KBUILD_BUILD_TIMESTAMP": time.strftime(
                "%Y-%m-%d %H:%M:%S UTC", time.gmtime(source_date_epoch)
            ),
            "KBUILD_BUILD_USER": "ukl-build",
            "KBUILD_BUILD_HOST": "ukl-build",
            "KBUILD_BUILD_VERSION": "1",
            "LC_ALL": "C",
            "TZ": "UTC",
            "CCACHE_DIR": str(cache.root / "ccache"),
            "CCACHE_BASEDIR": str(cache.root),
            "CCACHE_NOHASHDIR": "1",
            "CCACHE_MAXSIZE": "5G",
        }
    )
    return env


def build_kernel(tree: PatchedTree, config: KernelConfig, payload: Payload, compiler: Compiler,
                 ctx: BuildContext) -> KernelImages:
    """The images of ``tree`` + ``config`` with ``payload`` in them, from the cache or built.

    The build dir is shared by every app with this configuration and held
    under its lock from the first file written into it until the images are
    verified and copied out.  Nothing here trusts a timestamp: the outputs
    that depend on the app are removed unless the dir's stamp says they were
    verified against this very payload, and images go into the cache only
    after :func:`verify_images` found the payload in them.
    """
    cache, reporter, env = ctx.cache, ctx.reporter, ctx.env
    dir_key = digest("kbuild", tree.key, config.key)
    inputs = {name: file_sha256(path) for name, path in sorted(payload.files.items())}
    image_key = digest("images", 4, dir_key, inputs, payload.initramfs)
    images = cache.hold("images", image_key)
    build = cache.location("kbuild", dir_key)
    if cache.reusable("images", image_key):
        reporter.stage("kbuild", "kernel unchanged: reusing cached images (no make run)")
        return KernelImages(images / "bzImage", images / "vmlinux", image_key, False, build)

    with cache.workdir("kbuild", dir_key, image_key, PAYLOAD_OUTPUTS) as work:
        if cache.reusable("images", image_key):  # made by a build that held the lock before us
            reporter.stage("kbuild", "kernel unchanged: reusing cached images (no make run)")
            return KernelImages(images / "bzImage", images / "vmlinux", image_key, False, build)
        tree.check(cache)
        # make compares timestamps only: objects compiled from another copy of the tree
        # (one found damaged and made again) could be linked as they are.
        if work.restart_unless(TREE_MARK, file_sha256(cache.root / tree.kind / tree.key / RECORD)):
            reporter.stage("kbuild", f"{build.name[:16]}: built from another copy of the tree; "
                           "starting it afresh")
        _load_payload(work, config, payload, inputs, ctx)
        _make_bzimage(tree, work, compiler, reporter)
        verify_images(build / "vmlinux", build / "arch/x86/boot/bzImage", payload, env,
                      reporter)
        work.verified()

        def copy(tmp: Path) -> None:
            shutil.copyfile(build / "arch/x86/boot/bzImage", tmp / "bzImage")
            shutil.copyfile(build / "vmlinux", tmp / "vmlinux")
            verify_images(tmp / "vmlinux", tmp / "bzImage", payload, env, reporter)

        images = cache.entry("images", image_key, copy)
    return KernelImages(images / "bzImage", images / "vmlinux", image_key, True, build)


def _load_payload(work: WorkDir, config: KernelConfig, payload: Payload, inputs: dict[str, str],
                  ctx: BuildContext) -> None:
    """Put the .config and the app's files into the build dir; the outputs that depend
    on the app go first unless the dir's stamp says they were verified against this
    very payload."""
    env, reporter, build = ctx.env, ctx.reporter, work.path
    if not (build / ".config").is_file() or file_sha256(build / ".config") != config.key:
        shutil.copyfile(config.path, build / ".config")
    removed = work.remove_stale()
    if removed:
        reporter.log(f"kbuild: removed {removed} app-dependent outputs before relinking")
    mtime = int(env.get("SOURCE_DATE_EPOCH", "0"))
    for name, src in payload.files.items():
        dest = build / name
        if not dest.is_file() or file_sha256(dest) != inputs[name]:
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dest, src.read_bytes())
        # gen_init_cpio records each file's mtime in the initramfs: the build's fixed
        # time, so equal inputs give equal images.  make cannot be misled by it: the
        # outputs that depend on these files were removed above unless the stamp
        # names this very payload.
        os.utime(dest, (mtime, mtime))
    list_path = build / INITRAMFS_LIST
    if not list_path.is_file() or list_path.read_text() != payload.initramfs:
        atomic_write_text(list_path, payload.initramfs)


def _make_bzimage(tree: PatchedTree, work: WorkDir, compiler: Compiler,
                  reporter: Reporter) -> None:
    """make bzImage in the build dir, the lock's fd held by make until it exits."""
    build = work.path
    # ccache hands the compiler the source's path relative to CCACHE_BASEDIR (the
    # cache), which the tree's own -fmacro-prefix-map=$(srctree)/= does not strip:
    # __FILE__ would record ../../trees/KEY/tree/mm/x.c with ccache and mm/x.c
    # without it.  This map strips the relative form too, so the image does not
    # depend on whether (or how) a compiler cache ran.
    relative = sorted({os.path.relpath(tree.path, build),
                       os.path.relpath(tree.path.resolve(), build.resolve())})
    prefix_maps = " ".join(f"-fmacro-prefix-map={r}/=" for r in relative)
    argv = [*tree.make(build, f"-j{compiler.jobs}"), f"CC={compiler.cc}",
            f"KCPPFLAGS={prefix_maps}", "bzImage"]
    what = "cold build" if not (build / "include/generated").exists() else "incremental build"
    reporter.stage("kbuild", f"{what} of Linux {tree.release} in {build} "
                   f"({compiler.describe()})")
    compiler.reset_logs()
    counter = _Progress(reporter)
    reporter.run(argv, step="kernel build (make bzImage)", env=compiler.env,
                 on_line=counter, keep_fds=(work.lock_fd,))
    reporter.stage("kbuild", f"done: {counter.count} steps in {counter.elapsed():.0f} s")
    if line := stats_line(compiler):
        reporter.stage("kbuild", line)


def verify_images(vmlinux: Path, bzimage: Path, payload: Payload, env: dict[str, str],
                  reporter: Reporter) -> None:
    """Fail unless both images hold the payload: the check that no stale link gets shipped."""
    for what, data in (("vmlinux", vmlinux.read_bytes()),
                       ("bzImage", bzimage_kernel(bzimage, env, reporter))):
        if payload.expect not in data:
            raise BuildError(
                f"kbuild: the {what} that make produced does not contain this app "
                f"(payload sha256 {hashlib.sha256(payload.expect).hexdigest()[:16]}); "
                "not caching or shipping it",
                hint=f"{vmlinux.parent} may be damaged: python -m ukl_build clean --cache",
            )


def bzimage_kernel(path: Path, env: dict[str, str], reporter: Reporter) -> bytes:
    """The decompressed kernel inside a bzImage (boot protocol 2.08+ payload fields)."""
    data = path.read_bytes()
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise BuildError(f"kbuild: {path} is not a bzImage (no HdrS boot header)")
    setup_sects = data[0x1F1] or 4
    start = (setup_sects + 1) * 512 + struct.unpack_from("<I", data, 0x248)[0]
    blob = data[start:start + struct.unpack_from("<I", data, 0x24C)[0]]
    if blob.startswith(b"\x28\xb5\x2f\xfd"):  # zstd, with the kernel's 4-byte size appended
        return _decompress_with(["zstd", "-dcq"], blob[:-4], path, env, reporter)
    if blob.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor().decompress(blob)
    if blob.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob)
    if blob.startswith(b"BZh"):
        return bz2.BZ2Decompressor().decompress(blob)
    if blob.startswith(b"\x5d\x00\x00"):
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(blob)
    if blob.startswith(b"\x02\x21\x4c\x18"):
        return _decompress_with(["lz4", "-dcq"], blob[:-4], path, env, reporter)
    if blob.startswith(b"\x89LZO"):
        return _decompress_with(["lzop", "-dcq"], blob[:-4], path, env, reporter)
    raise BuildError(f"kbuild: {path}: unknown payload compression {blob[:6].hex()}")


def _decompress_with(argv: list[str], blob: bytes, what: Path, env: dict[str, str],
                     reporter: Reporter) -> bytes:
    try:
        return reporter.capture(argv, step=f"kbuild (check {what.name}: {argv[0]})", env=env,
                                input=blob).stdout
    except BuildError as e:
        raise BuildError(f"kbuild: cannot check {what}: {e}") from None


class _Progress:
    """Counts Kbuild's quiet-mode step lines and shows a live status line."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.count = 0
        self.start = time.monotonic()
        self.last_shown = 0.0
        self.interval = 1.0 if reporter.is_tty else 30.0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def __call__(self, line: str) -> None:
        m = _STEP.match(line)
        if not m:
            return
        self.count += 1
        now = time.monotonic()
        if now - self.last_shown >= self.interval:
            self.last_shown = now
            mins, secs = divmod(int(self.elapsed()), 60)
            self.reporter.live(
                f"[ukl-build] kbuild: {self.count} steps, {mins}m{secs:02d}s, "
                f"{m.group(1)} {m.group(2)}"
            )
