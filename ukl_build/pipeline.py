"""The build, stage by stage: settings -> source -> patch -> kconfig -> app -> kbuild -> images.

Each stage takes the previous stages' typed results and returns its own; no
stage reaches back.  The engine knows nothing of PEP 517 or the CLI.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ukl_build.appbuild import AppBinary, build_app
from ukl_build.artifacts import ImageInputs, ImageSet, check_out_dir, remove_owned, write_image_set
from ukl_build.cache import Cache, check_root, eviction_summary
from ukl_build.compilers import kernel_compiler
from ukl_build.context import BuildContext
from ukl_build.efi import Signer
from ukl_build.errors import ConfigError, UklError
from ukl_build.files import file_lock, parse_size
from ukl_build.imagefiles import image_files
from ukl_build.kbuild import KernelImages, build_kernel, payload_for, reproducible_env
from ukl_build.kconfig import ConfigRequest, configure
from ukl_build.patches import PatchedTree, apply_patches
from ukl_build.progress import Reporter
from ukl_build.resources import patches_dir
from ukl_build.settings import Settings, load_settings
from ukl_build.source import fetch_source

DEFAULT_SOURCE_DATE_EPOCH = 315532800  # 1980-01-01, the earliest date a zip can hold


@dataclass(frozen=True)
class BuildResult:
    settings: Settings
    images: ImageSet
    log: Path
    kernel: KernelImages
    app: AppBinary

    @property
    def kernel_built(self) -> bool:
        return self.kernel.built


@dataclass(frozen=True)
class BuildOptions:
    """What a caller other than a user's own build asks of it.

    ``own_metadata=False``: another backend owns ``[project]`` (see load_settings).
    ``shared_compilers=False``: no compiler cache and no distcc, whatever the
    settings say: the kernel compiles here, every file (``verify``).
    """

    own_metadata: bool = True
    shared_compilers: bool = True


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


def signer_of(settings: Settings) -> Signer | None:
    """``[tool.ukl-build.sign]`` with its paths resolved against the project."""
    sign = settings.sign
    if sign is None:
        return None
    key = settings.project_dir / sign.key if sign.key is not None else None
    return Signer(cert=settings.project_dir / sign.cert, key=key, key_env=sign.key_env,
                  cert_origin=settings.origin("sign.cert"),
                  key_origin=settings.origin("sign.key" if key else "sign.key-env"))


def prepare_tree(settings: Settings, cache: Cache, reporter: Reporter) -> PatchedTree:
    """Stages 1-2: a verified, patched kernel tree."""
    src = fetch_source(settings.kernel, settings.project_dir, cache, reporter)
    series = patches_dir() / f"linux-{settings.kernel.version}"
    return apply_patches(src, series, cache, reporter)


def build(
    project_dir: Path,
    config_settings: dict[str, Any] | None = None,
    *,
    cache: Cache | None = None,
    stream: TextIO | None = None,
    out_dir: Path | None = None,
    options: BuildOptions = BuildOptions(),
) -> BuildResult:
    """Build the project's images into ``out_dir`` (default: build/ukl-build/image)."""
    settings = load_settings(project_dir, config_settings, options.own_metadata)
    cache = cache or Cache()
    check_root(cache.root)
    bdir = build_dir_of(settings.project_dir)
    out_dir = (out_dir or bdir / "image").resolve()
    check_out_dir(out_dir, settings.project_dir)
    bdir.mkdir(parents=True, exist_ok=True)
    cache.mark()  # the build starts: whatever goes into the cache from here is ours

    def waiting() -> None:
        print(f"[ukl-build] waiting for another build of {settings.project_dir} to finish",
              file=stream or sys.stderr, flush=True)

    # One build of a project at a time: they share its app dir and build.log.  The
    # cache entries this build uses stay held until it ends (clean --max-size skips them).
    with file_lock(bdir / ".lock", waiting), Reporter(bdir / "build.log", stream) as reporter, \
            cache.in_use(lambda damage: reporter.stage("cache", damage)) as held:
        try:
            return _build(settings, held, bdir, out_dir, reporter, options.shared_compilers)
        except UklError as e:
            reporter.exception(e)
            remove_owned(out_dir)  # our stale image would not match the sources any more
            raise
        except BaseException as e:
            reporter.exception(e)
            raise


def _build(settings: Settings, cache: Cache, bdir: Path, out_dir: Path,
           reporter: Reporter, shared_compilers: bool) -> BuildResult:
    sde = source_date_epoch()
    env = reproducible_env(cache, sde, bdir)
    shortcuts = " + shortcuts" if settings.uses_shortcuts else ""
    project = settings.project
    reporter.stage("config", f"{project.name} {project.version}: mode {settings.mode}{shortcuts}, "
                   f"cache {cache.root}")
    if settings.shortcuts and not settings.uses_shortcuts:
        reporter.stage("config", "shortcuts = true has no effect in user mode")
    ctx = BuildContext(cache, reporter, env)
    tree = prepare_tree(settings, cache, reporter)
    config = configure(tree, ConfigRequest.of(settings), ctx)
    app = build_app(settings, tree, bdir, ctx)
    files = image_files(settings)
    kernel = build_kernel(tree, config, payload_for(app, files),
                          kernel_compiler(settings, env, bdir, cache.root / "bin",
                                          shared=shared_compilers), ctx)
    images = write_image_set(settings, out_dir, ImageInputs(tree, config, app, kernel, files),
                             ctx, signer_of(settings))
    for fmt, info in images.manifest["images"].items():
        reporter.stage("package", f"{fmt}: {out_dir / info['file']} ({info['size']} bytes)")
    if settings.cache.max_size is not None:  # this build's entries are held: they stay
        limit = parse_size(settings.cache.max_size)
        try:
            removed, left = cache.evict(limit)
        except OSError as e:  # the images are made and right: a failed trim is no failed build
            reporter.stage("cache", f"cache.max-size: could not trim {cache.root}: {e}")
        else:
            reporter.stage("cache", "cache.max-size: " + eviction_summary(removed, left, limit))
    return BuildResult(settings, images, reporter.log_path or bdir / "build.log", kernel, app)
