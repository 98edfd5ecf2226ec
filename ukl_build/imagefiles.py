"""Files of the project shipped in the image (``[tool.ukl-build.files]``): each checked
(in the project, not where ukl-build puts its own), directories expanded file by file,
and turned into entries of the built-in initramfs, in both modes."""

from __future__ import annotations

import os
import posixpath
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ukl_build.errors import ConfigError
from ukl_build.files import file_sha256
from ukl_build.settings import FileSettings, Settings, path_under

# What ukl-build itself puts into the initramfs (kbuild.initramfs_list): a file may not
# take these places, nor go below the trees.
RESERVED_FILES = frozenset({"/init", "/etc/passwd", "/etc/group"})
RESERVED_TREES = ("/dev", "/proc", "/tmp")
OURS = frozenset({"/", "/etc"})  # directories the initramfs has already
_MODE = re.compile(r"^0?[0-7]{3}$")
PAYLOAD_DIR = "ukl-root/files"  # where the files go in the kernel's build directory


@dataclass(frozen=True)
class ShippedFile:
    """One entry of the image: a file (its source and digest) or a directory."""

    path: str  # absolute, in the image
    source: Path | None  # None: a directory
    mode: int
    sha256: str | None = None
    rel: str | None = None  # the source, relative to the project

    def record(self) -> dict[str, str]:
        """For the manifest and the SBOM (files only)."""
        assert self.sha256 is not None and self.rel is not None
        return {"path": self.path, "source": self.rel, "sha256": self.sha256,
                "mode": f"{self.mode:04o}"}


def image_files(settings: Settings) -> list[ShippedFile]:
    """Every entry ``files`` asks for, directories expanded, parents first; refused with
    the key's origin when a source is missing, outside the project or not a plain file
    or directory, or when an entry would shadow ukl-build's own or another entry."""
    out: list[ShippedFile] = []
    for target, spec in sorted(settings.files.items()):
        where = _where(settings, target)
        path = _image_path(target, where)
        source = _source(settings.project_dir, spec, where)
        mode = int(spec.mode, 8) if spec.mode is not None else None
        if source.is_dir():
            out += _expand(settings.project_dir, source, path, mode, where)
        else:
            out.append(_file(settings.project_dir, source, path, mode, where))
    # The volumes' mount points: directories of the initramfs (the settings check that
    # no file goes at or below one).
    out += [ShippedFile(v.mount, None, 0o755) for _, v in sorted(settings.volumes.items())]
    return _with_parents(_checked(out))


def initramfs_entries(files: list[ShippedFile]) -> tuple[dict[str, Path], list[str]]:
    """(build-dir name -> source file, gen_init_cpio lines) for ``files``."""
    payload: dict[str, Path] = {}
    lines = []
    for i, f in enumerate(files):
        name = None
        if f.source is not None:
            name = f"{PAYLOAD_DIR}/{i}"
            payload[name] = f.source
        lines.append(cpio_line(f, name))
    return payload, lines


def cpio_line(f: ShippedFile, name: str | None) -> str:
    """``f``'s gen_init_cpio line; a file's content comes from ``name``."""
    if name is None:
        return f"dir {f.path} {f.mode:04o} 0 0"
    return f"file {f.path} {name} {f.mode:04o} 0 0"


def _where(settings: Settings, target: str) -> str:
    given = settings.origin.given(f"files.{target}")
    if given:
        return f"config setting -C {given[0]}"
    return f'{settings.origin.pyproject}: [tool.ukl-build.files."{target}"]'


def _image_path(target: str, where: str) -> str:
    if not target.startswith("/") or any(c.isspace() for c in target):
        raise ConfigError(f"{where}: the image path must be absolute and without white space")
    path = posixpath.normpath(target)
    if path != target.rstrip("/") or path in OURS or ".." in path.split("/"):
        raise ConfigError(f"{where}: {target!r} is not a plain absolute path "
                          "(no '.', '..', '//' or the root itself)")
    return path


def _source(project_dir: Path, spec: FileSettings, where: str) -> Path:
    if spec.mode is not None and not _MODE.match(spec.mode):
        raise ConfigError(f"{where} mode: expected octal permissions such as \"0644\", "
                          f"got {spec.mode!r}")
    source = (project_dir / spec.path).resolve()
    if not source.is_relative_to(project_dir.resolve()):
        raise ConfigError(f"{where} path: {spec.path} is outside the project; only the "
                          "project's own files go into the image")
    if not source.exists():
        raise ConfigError(f"{where} path: {source} does not exist")
    return source


def _file(project_dir: Path, source: Path, path: str, mode: int | None,
          where: str) -> ShippedFile:
    st = os.stat(source)  # not a link: resolved, or refused by _expand
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{where}: {source} is not a regular file or a directory")
    rel = source.relative_to(project_dir.resolve()).as_posix()
    if any(c.isspace() for c in rel):
        raise ConfigError(f"{where}: {rel} has white space in its name, which the "
                          "initramfs list cannot take")
    return ShippedFile(path, source, mode if mode is not None else st.st_mode & 0o777,
                       file_sha256(source), rel)


def _expand(project_dir: Path, top: Path, path: str, mode: int | None,
            where: str) -> list[ShippedFile]:
    """A directory, its subdirectories and files (sorted), below ``path``."""
    out = [ShippedFile(path, None, 0o755)]
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(top).as_posix()
        base = path if rel_dir == "." else f"{path}/{rel_dir}"
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise ConfigError(f"{where}: {os.path.join(dirpath, d)} is a symbolic link; "
                                  "ship what it points to instead")
            out.append(ShippedFile(f"{base}/{d}", None, 0o755))
        for name in sorted(filenames):
            src = Path(dirpath) / name
            if src.is_symlink():
                raise ConfigError(f"{where}: {src} is a symbolic link; ship what it points "
                                  "to instead")
            out.append(_file(project_dir, src, f"{base}/{name}", mode, where))
    return out


def _checked(files: list[ShippedFile]) -> list[ShippedFile]:
    seen: set[str] = set()
    for f in files:
        if f.path in RESERVED_FILES or any(path_under(f.path, t) for t in RESERVED_TREES):
            raise ConfigError(f"[tool.ukl-build] files: {f.path} is where ukl-build puts its "
                              "own (/init, /dev, /proc, /tmp, /etc/passwd, /etc/group)")
        if f.path in seen:
            raise ConfigError(f"[tool.ukl-build] files: {f.path} is named twice")
        seen.add(f.path)
    return files


def _with_parents(files: list[ShippedFile]) -> list[ShippedFile]:
    """The entries with the directories above them that nothing created yet, each
    before what it holds (gen_init_cpio needs the parent first)."""
    known = set(OURS) | {f.path for f in files if f.source is None}
    out: list[ShippedFile] = []
    for f in files:
        parents = []
        parent = posixpath.dirname(f.path)
        while parent not in known:
            parents.append(ShippedFile(parent, None, 0o755))
            known.add(parent)
            parent = posixpath.dirname(parent)
        out += reversed(parents)
        out.append(f)
    return out
