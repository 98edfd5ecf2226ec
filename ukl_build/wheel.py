"""Wheels and sdists of an app: its images, manifest and a self-contained launcher.

Tag: ``py3-none-any``.  The wheel holds no code that runs on the host's CPU:
the launcher is pure Python and the images are data for QEMU, which runs an
x86-64 guest on any host (TCG everywhere, KVM on x86-64 hosts).  The guest
architecture is recorded in the manifest (``arch``) for people and tools.  A
``linux_x86_64`` tag would be wrong twice: PyPI refuses it, and it would deny
the wheel to an aarch64 or macOS host that can boot the image perfectly well.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import stat
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ukl_build import __version__
from ukl_build.artifacts import SBOM, ImageSet
from ukl_build.errors import ConfigError
from ukl_build.files import new_path
from ukl_build.settings import Settings

WHEEL_TAG = "py3-none-any"
_SDIST_EXCLUDE = {"build", "dist", ".git", "__pycache__", ".venv", ".pytest_cache", ".ruff_cache"}


def dist_info_files(settings: Settings) -> dict[str, bytes]:
    project = settings.project
    return {
        "METADATA": project.metadata_bytes(),
        "WHEEL": (f"Wheel-Version: 1.0\nGenerator: ukl-build {__version__}\n"
                  f"Root-Is-Purelib: true\nTag: {WHEEL_TAG}\n").encode(),
        "entry_points.txt": (f"[console_scripts]\n{project.name} = "
                             f"{project.dist_name}.__main__:main\n").encode(),
        # PEP 639: the files [project] license-files names, under their project paths.
        **{f"licenses/{rel.as_posix()}": (settings.project_dir / rel).read_bytes()
           for rel in project.license_files},
    }


def write_metadata_dir(settings: Settings, directory: Path) -> str:
    info = f"{settings.project.dist_name}-{settings.project.version}.dist-info"
    (directory / info).mkdir(parents=True, exist_ok=True)
    for fname, data in dist_info_files(settings).items():
        (directory / info / fname).parent.mkdir(parents=True, exist_ok=True)
        (directory / info / fname).write_bytes(data)
    return info


def launcher_package() -> dict[str, bytes]:
    """The launcher package's modules by file name: what a wheel carries as ``_launcher/``
    (standard library and relative imports only, so it runs wherever it is put)."""
    source = Path(__file__).with_name("launcher")
    return {p.name: p.read_bytes() for p in sorted(source.glob("*.py"))}


def launcher_files(settings: Settings) -> dict[str, bytes]:
    project = settings.project
    init = (f'"""{project.name} {project.version}: a ukl-build unikernel image and its launcher."""\n\n'
            "from pathlib import Path\n\n"
            f'__version__ = "{project.version}"\n'
            'IMAGE_DIR = Path(__file__).resolve().parent / "_image"\n').encode()
    main = (b"import sys\n\n"
            b"from . import IMAGE_DIR\n"
            b"from ._launcher import launcher_main\n\n\n"
            b"def main() -> int:\n"
            b"    return launcher_main(IMAGE_DIR, sys.argv[1:])\n\n\n"
            b'if __name__ == "__main__":\n'
            b"    sys.exit(main())\n")
    return {"__init__.py": init, "__main__.py": main,
            **{f"_launcher/{name}": data for name, data in launcher_package().items()}}


def _zip_time(epoch: int) -> tuple[int, int, int, int, int, int]:
    return time.gmtime(max(epoch, 315532800))[:6]


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(settings: Settings, images: ImageSet, wheel_dir: Path, epoch: int) -> str:
    """Write the wheel atomically into ``wheel_dir``; return its file name."""
    name = settings.project.dist_name
    filename = f"{name}-{settings.project.version}-{WHEEL_TAG}.whl"
    info = f"{name}-{settings.project.version}.dist-info"
    entries: list[tuple[str, bytes | Path]] = []
    for fname, data in launcher_files(settings).items():
        entries.append((f"{name}/{fname}", data))
    for f in images.files():
        if f.name != SBOM:  # it goes to .dist-info/sboms/ (once: no duplicate files)
            entries.append((f"{name}/_image/{f.name}", f))
    for fname, data in dist_info_files(settings).items():
        entries.append((f"{info}/{fname}", data))
    # PEP 770: SBOMs of what the wheel bundles live in .dist-info/sboms/.
    entries.append((f"{info}/sboms/{SBOM}", images.directory / SBOM))

    stamp = _zip_time(epoch)
    records = []
    with new_path(wheel_dir / filename) as tmp, \
            zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, content in sorted(entries, key=lambda e: e[0]):
            data = content.read_bytes() if isinstance(content, Path) else content
            zi = zipfile.ZipInfo(arcname, stamp)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
            records.append(f"{arcname},{_record_hash(data)},{len(data)}")
        records.append(f"{info}/RECORD,,")
        zi = zipfile.ZipInfo(f"{info}/RECORD", stamp)
        zi.external_attr = 0o644 << 16
        zf.writestr(zi, "\n".join(records) + "\n")
    return filename


@dataclass(frozen=True)
class _Member:
    rel: str  # path in the project, POSIX
    path: Path
    link: str | None = None  # a symbolic link inside the project: its (relative) target


def _sdist_members(root: Path) -> list[_Member]:
    """What the sdist holds, checked before anything is written: regular files, and
    symbolic links whose target is inside the project (kept as links).  A link out
    of the project, a dangling link or a special file (FIFO, socket, device) is
    refused by name, as sources are."""
    members = []
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SDIST_EXCLUDE and not d.endswith(".egg-info"))
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = [d for d in dirnames if d not in links]  # kept as links, not walked
        for name in sorted(filenames + links):
            path = Path(dirpath) / name
            members.append(_sdist_member(path, path.relative_to(root).as_posix(), real_root))
    return members


def _sdist_member(path: Path, rel: str, real_root: Path) -> _Member:
    """One file of the sdist: a regular file, or a link to a file in the project."""
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        return _Member(rel, path)
    if not stat.S_ISLNK(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket"
                if stat.S_ISSOCK(st.st_mode) else "a device or other special file")
        raise ConfigError(f"sdist: {rel} is {kind}, not a regular file; only files and "
                          "links inside the project are packed")
    target = os.readlink(path)
    resolved = (path.parent / target).resolve()
    if not resolved.is_relative_to(real_root):
        raise ConfigError(f"sdist: {rel} is a symbolic link to {target}, outside the "
                          "project; nothing outside the project is packed")
    if not resolved.exists():
        raise ConfigError(f"sdist: {rel} is a symbolic link to {target}, which "
                          "does not exist")
    return _Member(rel, path, os.path.relpath(resolved, (real_root / rel).parent))


def write_sdist(settings: Settings, sdist_dir: Path, epoch: int) -> str:
    base = f"{settings.project.dist_name}-{settings.project.version}"
    filename = f"{base}.tar.gz"

    def add(tar: tarfile.TarFile, arcname: str, data: bytes, mode: int = 0o644) -> None:
        ti = tarfile.TarInfo(arcname)
        ti.size, ti.mtime, ti.mode = len(data), epoch, mode
        ti.uname = ti.gname = ""
        tar.addfile(ti, io.BytesIO(data))

    def add_link(tar: tarfile.TarFile, arcname: str, target: str) -> None:
        ti = tarfile.TarInfo(arcname)
        ti.type, ti.linkname, ti.mtime, ti.mode = tarfile.SYMTYPE, target, epoch, 0o777
        ti.uname = ti.gname = ""
        tar.addfile(ti)

    root = settings.project_dir
    members = _sdist_members(root)  # refused before the output file exists
    with new_path(sdist_dir / filename) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=epoch) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            if m.link is not None:
                add_link(tar, f"{base}/{m.rel}", m.link)
            else:
                mode = 0o755 if os.access(m.path, os.X_OK) else 0o644
                add(tar, f"{base}/{m.rel}", m.path.read_bytes(), mode)
        add(tar, f"{base}/PKG-INFO", settings.project.metadata_bytes())
    return filename
