"""The build, stage by stage: settings -> source -> patch -> kconfig -> app -> kbuild -> images.

Each stage takes the previous stages' typed results and returns its own; no
stage reaches back.  The engine knows nothing of PEP 517 or the CLI.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ukl_build.appbuild import build_app
from ukl_build.artifacts import ImageSet, write_image_set
from ukl_build.cache import Cache
from ukl_build.errors import ConfigError, UklError
from ukl_build.kbuild import KernelImages, Payload, build_kernel, reproducible_env
from ukl_build.kconfig import configure
from ukl_build.patches import PatchedTree, apply_patches
from ukl_build.progress import Reporter
from ukl_build.resources import patches_dir
from ukl_build.settings import Settings, load_settings
from ukl_build.source import fetch_source

DEFAULT_SOURCE_DATE_EPOCH = 315532800  # 1980-01-01, the earliest date a zip can hold
FORMAT_RECIPES = {"pvh": "pvh"}
UKL_ARCHIVE = "ukl-app.a"  # matches CONFIG_UKL_ARCHIVE in recipes/ukl.config


@dataclass(frozen=True)
class BuildResult:
    settings: Settings
    images: ImageSet
    log: Path
    kernel: KernelImages

    @property
    def kernel_built(self) -> bool:
        return self.kernel.built


def build_dir_of(project_dir: Path) -> Path:
    return project_dir.resolve() / "build" / "ukl-build"


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return DEFAULT_SOURCE_DATE_EPOCH
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"SOURCE_DATE_EPOCH={value!r} is not an integer") from None


def prepare_tree(settings: Settings, cache: Cache, reporter: Reporter) -> PatchedTree:
    """Stages 1-2: a verified, patched kernel tree."""
    src = fetch_source(settings.kernel, settings.project_dir, cache, reporter)
    series = patches_dir() / f"linux-{settings.kernel.version}"
    return apply_patches(src, series, cache, reporter)


def initramfs_list(init_name: str | None) -> str:
    """gen_init_cpio input: a console node (or the app's stdout goes nowhere) and /init."""
    lines = ["dir /dev 0755 0 0", "nod /dev/console 0600 0 0 c 5 1",
             "nod /dev/null 0666 0 0 c 1 3", "nod /dev/zero 0666 0 0 c 1 5",
             "dir /proc 0755 0 0", "dir /tmp 01777 0 0"]
    if init_name is not None:
        lines.append(f"file /init {init_name} 0755 0 0")
    return "\n".join(lines) + "\n"


def build(
    project_dir: Path,
    config_settings: dict[str, Any] | None = None,
    *,
    cache: Cache | None = None,
    stream: TextIO | None = None,
    out_dir: Path | None = None,
) -> BuildResult:
    """Build the project's images into ``out_dir`` (default: build/ukl-build/image)."""
    settings = load_settings(project_dir, config_settings)
    cache = cache or Cache()
    bdir = build_dir_of(settings.project_dir)
    out_dir = out_dir or bdir / "image"
    bdir.mkdir(parents=True, exist_ok=True)
    with Reporter(bdir / "build.log", stream) as reporter:
        try:
            return _build(settings, cache, bdir, out_dir, reporter)
        except UklError as e:
            reporter.exception(e)
            if out_dir.exists():  # a stale image would not match the sources any more
                shutil.rmtree(out_dir)
            raise
        except BaseException as e:
            reporter.exception(e)
            raise


def _build(settings: Settings, cache: Cache, bdir: Path, out_dir: Path,
           reporter: Reporter) -> BuildResult:
    sde = source_date_epoch()
    env = reproducible_env(cache, sde)
    shortcuts = " + shortcuts" if settings.uses_shortcuts else ""
    reporter.stage("config", f"{settings.name} {settings.version}: mode {settings.mode}{shortcuts}, "
                   f"cache {cache.root}")
    if settings.shortcuts and not settings.uses_shortcuts:
        reporter.stage("config", "shortcuts = true has no effect in user mode")
    tree = prepare_tree(settings, cache, reporter)
    recipes = list(settings.recipes)
    if settings.mode == "ukl" and "ukl" not in recipes:
        recipes.append("ukl")
    for fmt in settings.formats:
        if fmt in FORMAT_RECIPES and FORMAT_RECIPES[fmt] not in recipes:
            recipes.append(FORMAT_RECIPES[fmt])
    config = configure(tree, recipes, settings.kconfig_items(), settings.project_dir, cache,
                       reporter, env)
    app = build_app(settings, tree, bdir, cache, reporter, env)
    if settings.mode == "ukl":
        # The app is linked into vmlinux; the initramfs only gives it a console.
        payload = Payload(files={UKL_ARCHIVE: app.path}, initramfs=initramfs_list(None))
    else:
        payload = Payload(files={"ukl-root/init": app.path},
                          initramfs=initramfs_list("ukl-root/init"))
    kernel = build_kernel(tree, config, payload, cache, reporter, env, jobs=os.cpu_count() or 1)
    images = write_image_set(settings, out_dir, tree, config, app, kernel, sde)
    for fmt, info in images.manifest["images"].items():
        reporter.stage("package", f"{fmt}: {out_dir / info['file']} ({info['size']} bytes)")
    return BuildResult(settings, images, reporter.log_path or bdir / "build.log", kernel)
