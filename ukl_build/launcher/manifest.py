"""manifest.json: what an image directory holds and how it boots by default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from .options import Accel, Machine, RunError, RunOptions
from .volumes import VolumeRecord

# manifest.json, schema 1: written by ukl_build.artifacts, read here (and by the launcher
# copy of this package in every wheel, which is why the shape is defined here: stdlib only).
MANIFEST_SCHEMA = 1


class ImageFile(TypedDict):
    file: str  # in the image directory
    sha256: str
    size: int


class KernelConfigFile(TypedDict):
    file: str
    sha256: str  # the resolved .config's key


class KernelRecord(TypedDict):
    release: str  # e.g. 6.1.192
    source: dict[str, Any]  # where the tree came from, with its digest
    series: str  # the patch series applied, e.g. linux-6.12 (kernel_patches/<series>)
    patches: list[dict[str, str]]  # name, sha256, in order
    recipes: list[str]
    config: KernelConfigFile


class _AppRecord(TypedDict):
    libc: str
    compiler: str
    sha256: str
    shortcuts: bool


class AppRecord(_AppRecord, total=False):
    binutils: str  # `ld --version`: the linker of the app (and of vmlinux)
    files: list[dict[str, str]]  # sources = [...] builds: each file (path, sha256)
    source: dict[str, Any]  # a fetched app source tree, with its digest
    libc_source: dict[str, Any]  # musl: version and source
    deps: list[dict[str, Any]]  # libraries built from source and linked in


class _RunDefaults(TypedDict):
    machine: Machine
    memory: str
    smp: int
    accel: Accel
    forward: list[str]


class RunDefaults(_RunDefaults, total=False):
    """How the image boots unless told otherwise: RunOptions' defaults, or the project's."""
    image: str  # the format booted by default: the first one built


class _Manifest(TypedDict):
    schema: int
    name: str
    version: str
    module: str  # the launcher's Python module
    mode: str  # "ukl" or "user"
    arch: str
    ukl_build: str  # the version that built it
    source_date_epoch: int
    kernel: KernelRecord
    app: AppRecord
    cmdline: str
    args: list[str]
    init_arg_limit: int
    network: bool
    images: dict[str, ImageFile]  # by format: bzimage, pvh
    run: RunDefaults


class Manifest(_Manifest, total=False):
    qemu: dict[str, str]  # by format: the QEMU command line, for people
    cmdline_builtin: str  # efi/disk builds: the whole command line, built into the kernel
    signed: bool  # efi/disk builds: the EFI image is signed for Secure Boot
    listen_notify: bool  # the kernel takes listen_notify= (patch 0020): see forward.py
    files: list[dict[str, str]]  # [tool.ukl-build.files]: path, source, sha256, mode each
    volumes: dict[str, VolumeRecord]  # [tool.ukl-build.volumes], by name


def load_manifest(image_dir: Path) -> Manifest:
    path = image_dir / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not found (not a ukl-build image directory)") from None
    except ValueError as e:
        raise RunError(f"{path}: not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        raise RunError(f"{path}: not a ukl-build manifest of schema {MANIFEST_SCHEMA}")
    missing = [k for k in _Manifest.__annotations__ if k not in data]
    if missing:
        raise RunError(f"{path}: missing {', '.join(missing)}")
    manifest: Manifest = data  # type: ignore[assignment]  # checked above, key by key
    return manifest


def run_defaults(manifest: Manifest) -> RunDefaults:
    """The image's ``run`` table over RunOptions' own defaults."""
    out = default_run()
    out.update(manifest["run"])
    return out


def default_run() -> RunDefaults:
    """RunOptions' own defaults: the one place they live (settings.RunSettings uses them too)."""
    base = RunOptions()
    return {"accel": base.accel, "machine": base.machine, "memory": base.memory,
            "smp": base.smp, "forward": list(base.forward)}
