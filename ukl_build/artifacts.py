"""Stage 7: the distributable image directory: images, kernel config and manifest.json.

The directory is assembled next to its final place and renamed over it, so
readers see the old complete set or the new complete set, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ukl_build import __version__
from ukl_build.appbuild import AppBinary
from ukl_build.context import BuildContext
from ukl_build.efi import Signer, make_disk, make_efi
from ukl_build.errors import BuildError, ConfigError
from ukl_build.files import file_sha256
from ukl_build.imagefiles import ShippedFile
from ukl_build.kbuild import KernelImages
from ukl_build.kconfig import KernelConfig, read_config
from ukl_build.launcher.cmdline import DEFAULT_INIT_ARG_LIMIT, builtin_cmdline
from ukl_build.launcher.manifest import MANIFEST_SCHEMA, AppRecord, ImageFile, Manifest
from ukl_build.launcher.options import RunError, RunOptions
from ukl_build.launcher.qemu import qemu_argv
from ukl_build.patches import PatchedTree
from ukl_build.progress import Reporter
from ukl_build.settings import Settings, volume_records, volume_table

MANIFEST = "manifest.json"
SBOM = "sbom.cdx.json"


@dataclass(frozen=True)
class ImageSet:
    directory: Path
    manifest: Manifest

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def image(self, fmt: str) -> Path:
        name: str = self.manifest["images"][fmt]["file"]
        return self.directory / name


def qemu_example(manifest: Manifest, fmt: str) -> str:
    """The command ``ukl_build run`` would use, for people who boot the image by hand."""
    run = manifest["run"]
    opts = RunOptions(machine=run["machine"], memory=run["memory"], smp=run["smp"],
                      forward=run["forward"], image=fmt, secure_boot=manifest.get("signed", False))
    argv = qemu_argv(manifest, Path("."), opts, "tcg", check_files=False)
    return " ".join(shlex.quote(a) for a in argv)


@dataclass(frozen=True)
class ImageInputs:
    """What an image set is made of: the kernel tree, its configuration, the app and the
    kernel images with the app in them."""

    tree: PatchedTree
    config: KernelConfig
    app: AppBinary
    kernel: KernelImages
    files: Sequence[ShippedFile] = ()  # [tool.ukl-build.files], in the initramfs


def write_image_set(settings: Settings, out_dir: Path, inputs: ImageInputs, ctx: BuildContext,
                    signer: Signer | None = None) -> ImageSet:
    """The image directory (each format, the .config, the manifest and the SBOM), written
    whole into a temporary sibling and then put in place of ``out_dir``."""
    env, reporter = ctx.env, ctx.reporter
    tree, config, app, kernel = inputs.tree, inputs.config, inputs.app, inputs.kernel
    name = settings.project.dist_name
    values = read_config(config.path)
    network = values.get("VIRTIO_NET") == "y"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        images = _write_images(settings, tmp, kernel, signer, env, reporter)
        shutil.copy2(config.path, tmp / f"{name}.config")
        manifest: Manifest = {
            "schema": MANIFEST_SCHEMA,
            "name": settings.project.name,
            "version": settings.project.version,
            "module": name,
            "mode": settings.mode,
            "arch": "x86_64",
            "ukl_build": __version__,
            "source_date_epoch": int(env["SOURCE_DATE_EPOCH"]),
            "kernel": {
                "release": tree.release,
                "source": tree.source.origin,
                "series": f"linux-{settings.kernel.version}",
                "patches": [{"name": p.name, "sha256": p.sha256} for p in tree.patches],
                "recipes": list(config.recipes),
                "config": {"file": f"{name}.config", "sha256": config.key},
            },
            "app": _app_record(app, settings, reporter),
            "cmdline": settings.cmdline,
            "args": list(settings.args),
            "init_arg_limit": int(values.get("INIT_ENV_ARG_LIMIT", DEFAULT_INIT_ARG_LIMIT)),
            "network": network,
            "listen_notify": network,  # kernel patch 0020: forwards open when the app listens
            "images": images,
            "run": {
                "machine": settings.run_machine,
                "memory": settings.run.memory,
                "smp": settings.run.smp,
                "accel": settings.run.accel,
                "forward": list(settings.run.forward),
                "image": settings.formats[0],
            },
        }
        shipped = [f.record() for f in inputs.files if f.source is not None]
        if shipped:
            manifest["files"] = shipped
        if settings.volumes:
            manifest["volumes"] = dict(volume_table(settings))
        if settings.firmware_boot:
            manifest["cmdline_builtin"] = builtin_cmdline(settings.cmdline, settings.args,
                                                          volumes=volume_records(settings))
            manifest["signed"] = signer is not None
        try:
            manifest["qemu"] = {fmt: qemu_example(manifest, fmt) for fmt in images}
        except RunError as e:  # the command line the kernel would cut or mangle
            raise ConfigError(f"{settings.origin('cmdline')}, with the app's arguments: {e}") from None
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (tmp / SBOM).write_text(json.dumps(sbom(manifest), indent=2, sort_keys=True) + "\n")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImageSet(out_dir, manifest)


def _write_images(settings: Settings, tmp: Path, kernel: KernelImages, signer: Signer | None,
                  env: dict[str, str], reporter: Reporter) -> dict[str, ImageFile]:
    """Each format's file in ``tmp``, in the order of ``formats``."""
    name = settings.project.dist_name
    files = {"bzimage": f"{name}.bzImage", "pvh": f"{name}.vmlinux", "efi": f"{name}.efi",
             "disk": f"{name}.disk.img"}
    images: dict[str, ImageFile] = {}
    efi = tmp / files["efi"]
    if settings.firmware_boot:  # the disk holds the efi image, shipped or not
        make_efi(kernel.bzimage, efi, signer, env, reporter)
    for fmt in settings.formats:
        path = tmp / files[fmt]
        if fmt == "bzimage":
            shutil.copy2(kernel.bzimage, path)
        elif fmt == "pvh":
            shutil.copy2(kernel.vmlinux, path)
        elif fmt == "disk":
            make_disk(efi, path, env, reporter)
        images[fmt] = {"file": path.name, "sha256": file_sha256(path), "size": path.stat().st_size}
    if settings.firmware_boot and "efi" not in settings.formats:
        efi.unlink()
    return images


def binutils_version(reporter: Reporter) -> str:
    """The linker's ``--version`` line (binutils links the app and vmlinux)."""
    try:
        out = reporter.capture(["ld", "--version"], step="package (the linker's version)").text
    except BuildError as e:
        raise BuildError(f"package: cannot ask ld for its version: {e}",
                         hint="apt-get install binutils") from None
    return out.splitlines()[0] if out else "unknown"


def _app_record(app: AppBinary, settings: Settings, reporter: Reporter) -> AppRecord:
    record: AppRecord = {"libc": app.libc, "compiler": app.compiler, "sha256": app.sha256,
                         "shortcuts": settings.uses_shortcuts,
                         "binutils": binutils_version(reporter)}
    if settings.sources:  # the build checked these files' digests before reusing the app
        record["files"] = [{"path": rel, "sha256": file_sha256(settings.project_dir / rel)}
                           for rel in settings.sources]
    if app.source is not None:
        record["source"] = app.source
    if app.libc_source is not None:
        record["libc_source"] = app.libc_source
    if app.deps:
        record["deps"] = list(app.deps)
    return record


def sbom(manifest: Manifest) -> dict[str, Any]:
    """A CycloneDX 1.5 document: the image, the kernel it contains (with our patches), the app."""
    app_ref = f"app:{manifest['name']}@{manifest['version']}"
    kernel_ref = f"linux@{manifest['kernel']['release']}"
    doc: dict[str, Any] = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "component": {"type": "operating-system", "bom-ref": "image", "name": manifest["name"],
                          "version": manifest["version"],
                          "hashes": [{"alg": "SHA-256", "content": img["sha256"]}
                                     for img in manifest["images"].values()]},
            "tools": {"components": _tools(manifest)},
        },
        "components": [_app_component(manifest, app_ref), _kernel_component(manifest, kernel_ref)],
        "dependencies": [{"ref": "image", "dependsOn": [app_ref, kernel_ref]}],
    }
    parts = _app_parts(manifest)
    doc["components"] += parts
    if parts:  # one entry per ref
        doc["dependencies"].append({"ref": app_ref, "dependsOn": [c["bom-ref"] for c in parts]})
    shipped = [_shipped_file(f) for f in manifest.get("files", [])]
    doc["components"] += shipped
    doc["dependencies"][0]["dependsOn"] += [c["bom-ref"] for c in shipped]
    return doc


def _shipped_file(f: dict[str, str]) -> dict[str, Any]:
    """A project file in the image's initramfs ([tool.ukl-build.files])."""
    return {"type": "file", "bom-ref": f"image-file:{f['path']}", "name": f["path"],
            "hashes": [{"alg": "SHA-256", "content": f["sha256"]}],
            "properties": [{"name": "ukl-build:source", "value": f["source"]},
                           {"name": "ukl-build:mode", "value": f["mode"]}]}


def _app_component(manifest: Manifest, ref: str) -> dict[str, Any]:
    """The app, with its own source files (their digests) where the build lists them."""
    component: dict[str, Any] = {
        "type": "application", "bom-ref": ref, "name": manifest["name"],
        "version": manifest["version"],
        "hashes": [{"alg": "SHA-256", "content": manifest["app"]["sha256"]}],
        "properties": [{"name": "ukl-build:mode", "value": manifest["mode"]},
                       {"name": "ukl-build:libc", "value": manifest["app"]["libc"]}]}
    files = manifest["app"].get("files")
    if files:
        component["components"] = [
            {"type": "file", "bom-ref": f"app-file:{f['path']}", "name": f["path"],
             "hashes": [{"alg": "SHA-256", "content": f["sha256"]}]} for f in files]
    return component


def _kernel_component(manifest: Manifest, ref: str) -> dict[str, Any]:
    """The kernel: its source, our patches (each digest a property: a CycloneDX patch has
    no hashes), its configuration and recipes."""
    kernel = manifest["kernel"]
    src = kernel["source"]
    return {
        "type": "operating-system", "bom-ref": ref, "name": "linux",
        "version": kernel["release"],
        "hashes": [{"alg": "SHA-256", "content": h} for h in (src.get("sha256"),) if h],
        "licenses": [{"license": {"id": "GPL-2.0-only"}}],
        "externalReferences": [{"type": "distribution",
                                "url": src.get("url") or src.get("path") or src.get("package")
                                or "unknown"}],
        "pedigree": {"patches": [{"type": "unofficial", "diff": {"url": p["name"]},
                                  "resolves": []} for p in kernel["patches"]]},
        "properties": [{"name": "ukl-build:config-sha256", "value": kernel["config"]["sha256"]},
                       {"name": "ukl-build:recipes", "value": ",".join(kernel["recipes"])},
                       {"name": "ukl-build:patch-series", "value": kernel["series"]},
                       *({"name": f"ukl-build:patch-sha256:{p['name']}", "value": p["sha256"]}
                         for p in kernel["patches"])]}


def _app_parts(manifest: Manifest) -> list[dict[str, Any]]:
    """What the app is built from besides its own files: the fetched source tree, a libc
    built from source, libraries built from source (each linked into the app)."""
    parts = []
    source = manifest["app"].get("source")
    if source is not None:
        parts.append(app_source_component("app-source", f"{manifest['name']}-source", source))
    libc = manifest["app"].get("libc_source")
    if libc is not None:
        component = app_source_component("libc", libc["name"], libc)
        component["type"] = "library"
        component["version"] = libc["version"]
        component["licenses"] = [{"license": {"id": "MIT"}}]
        parts.append(component)
    for dep in manifest["app"].get("deps", []):
        component = app_source_component(f"dep-{dep['name']}", dep["name"], dep)
        component["type"] = "library"
        parts.append(component)
    return parts


def _tools(manifest: Manifest) -> list[dict[str, Any]]:
    """ukl-build and the toolchain: the compiler and binutils, named as they name themselves."""
    tools: list[dict[str, Any]] = [
        {"type": "application", "name": "ukl-build", "version": manifest["ukl_build"]}]
    compiler = manifest["app"]["compiler"]  # "gcc (Debian 12.2.0-14) 12.2.0"
    cc = next((w for w in compiler.split() if w in ("gcc", "clang")), "cc")
    for name, line in ((cc, compiler), ("binutils", manifest["app"].get("binutils"))):
        if line:  # binutils: "GNU ld (GNU Binutils for Debian) 2.40"
            tools.append({"type": "application", "name": name, "version": line.split()[-1],
                          "description": line})
    return tools


def app_source_component(ref_name: str, name: str, source: dict[str, Any]) -> dict[str, Any]:
    digest = source.get("sha256") or source.get("tree_sha256")
    if source["kind"] == "git":
        ref = {"type": "vcs", "url": source["url"]}
    elif source["kind"] == "debian":
        ref = {"type": "distribution", "url": f"debian-source:{source['package']}"}
    else:
        ref = {"type": "distribution", "url": source.get("url") or source["path"]}
    component: dict[str, Any] = {
        "type": "application", "bom-ref": ref_name, "name": name,
        "externalReferences": [ref],
        "properties": [{"name": "ukl-build:source-kind", "value": source["kind"]}]}
    if source["kind"] in ("git", "debian"):
        component["version"] = source.get("commit") or source["version"]
    if digest:
        component["hashes"] = [{"alg": "SHA-256", "content": digest}]
    return component


def owned_files(directory: Path) -> set[str] | None:
    """The file names of a ukl-build image directory, or None if ``directory`` is not one.

    Ours means: a manifest.json that ukl-build wrote, and nothing in the
    directory but the files that manifest accounts for.
    """
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        names = {MANIFEST, SBOM, manifest["kernel"]["config"]["file"],
                 *(img["file"] for img in manifest["images"].values())}
        present = {p.name for p in directory.iterdir()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if "ukl_build" not in manifest or not present <= names:
        return None
    return present


def check_out_dir(out_dir: Path, project_dir: Path, origin: str = "--out") -> None:
    """Refuse an output directory whose contents ukl-build did not create.

    Allowed: a path that does not exist, an empty directory, or an image
    directory of ours (see :func:`owned_files`), which is replaced whole.
    """
    out_dir = out_dir.resolve()
    if out_dir == project_dir or out_dir in project_dir.parents:
        raise ConfigError(f"{origin} {out_dir}: is the project directory or holds it; "
                          "ukl-build replaces its output directory whole",
                          hint="name a new directory, e.g. build/image")
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise ConfigError(f"{origin} {out_dir}: exists and is not a directory")
    if any(out_dir.iterdir()) and owned_files(out_dir) is None:
        raise ConfigError(
            f"{origin} {out_dir}: not empty and not a ukl-build image directory; "
            "refusing to replace what ukl-build did not create",
            hint="name a new or empty directory")


def remove_owned(directory: Path) -> None:
    """Remove an image directory of ours (only its own files; else leave it be)."""
    names = owned_files(directory)
    if names is None:
        return
    for name in names:
        (directory / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()


def replace_dir(new: Path, final: Path) -> None:
    """Put ``new`` at ``final``, replacing an empty directory or an image directory of ours."""
    if final.exists():
        if any(final.iterdir()) and owned_files(final) is None:  # appeared since check_out_dir
            raise ConfigError(f"{final}: files appeared there that ukl-build did not create; "
                              "not replacing it")
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
        os.rename(new, final)
        remove_owned(old)
        with contextlib.suppress(OSError):
            old.rmdir()  # the empty directory we replaced
    else:
        os.rename(new, final)
