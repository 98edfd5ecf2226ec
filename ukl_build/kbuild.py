"""Stage 6: build the kernel out of tree, with the app built in.

One build directory (``make O=...``) per (tree, .config); apps that share a
kernel configuration share its objects, so switching apps only relinks.  The
app enters through fixed paths inside that directory (the initramfs list and,
in UKL mode, the app archive), so the .config does not depend on the app.
Images are copied to a content-addressed cache entry; a rebuild whose inputs
are all unchanged finds that entry and runs no make at all.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ukl_build.cache import Cache, atomic_write_text, digest, file_sha256
from ukl_build.kconfig import KernelConfig
from ukl_build.patches import PatchedTree
from ukl_build.progress import Reporter

INITRAMFS_LIST = "ukl-initramfs.list"  # matches CONFIG_INITRAMFS_SOURCE in recipes/base.config
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


def reproducible_env(cache: Cache, source_date_epoch: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
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


def build_kernel(
    tree: PatchedTree,
    config: KernelConfig,
    payload: Payload,
    cache: Cache,
    reporter: Reporter,
    env: dict[str, str],
    jobs: int,
) -> KernelImages:
    toolchain = shutil.which("gcc") or "gcc"
    ccache = shutil.which("ccache")
    dir_key = digest("kbuild", tree.key, config.key)
    inputs = {name: file_sha256(path) for name, path in sorted(payload.files.items())}
    image_key = digest("images", dir_key, inputs, payload.initramfs)
    images = cache.path("images", image_key)
    build = cache.path("kbuild", dir_key)
    if (images / "bzImage").is_file():
        reporter.stage("kbuild", "kernel unchanged: reusing cached images (no make run)")
        return KernelImages(images / "bzImage", images / "vmlinux", image_key, False, build)

    with cache.lock("kbuild", dir_key):
        build.mkdir(parents=True, exist_ok=True)
        if not (build / ".config").is_file() or file_sha256(build / ".config") != config.key:
            shutil.copy2(config.path, build / ".config")
        for name, src in payload.files.items():
            dest = build / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.is_file() or file_sha256(dest) != inputs[name]:
                tmp = dest.with_name(dest.name + ".tmp")
                shutil.copy2(src, tmp)
                os.replace(tmp, dest)
        list_path = build / INITRAMFS_LIST
        if not list_path.is_file() or list_path.read_text() != payload.initramfs:
            atomic_write_text(list_path, payload.initramfs)

        argv = ["make", "-C", str(tree.path), f"O={build}", "ARCH=x86_64", f"-j{jobs}"]
        if ccache:
            argv.append(f"CC={ccache} {toolchain}")
        argv.append("bzImage")
        what = "cold build" if not (build / "vmlinux").exists() else "incremental build"
        reporter.stage("kbuild", f"{what} of Linux {tree.release} in {build} "
                       f"(-j{jobs}{', ccache' if ccache else ''})")
        counter = _Progress(reporter)
        reporter.run(argv, step="kernel build (make bzImage)", env=env, on_line=counter)
        reporter.stage("kbuild", f"done: {counter.count} steps in {counter.elapsed():.0f} s")

        def copy(tmp: Path) -> None:
            shutil.copy2(build / "arch/x86/boot/bzImage", tmp / "bzImage")
            shutil.copy2(build / "vmlinux", tmp / "vmlinux")

        images = cache.entry("images", image_key, copy)
    return KernelImages(images / "bzImage", images / "vmlinux", image_key, True, build)


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
