"""File primitives every stage uses: content digests, files and directories written
whole or not at all, exclusive locks across processes, sizes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol


def digest(*parts: object) -> str:
    """A stable sha256 over JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


def hash_file(path: Path | str, *hashers: _Hasher) -> None:
    """Stream a file once through every hasher given (1 MiB at a time)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for h in hashers:
                h.update(chunk)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    hash_file(path, h)
    return h.hexdigest()


def mib(n: int) -> str:
    """Bytes as MiB, one decimal."""
    return f"{n / 2**20:.1f} MiB"


def tree_size(path: Path) -> int:
    """Bytes allocated under ``path`` (files and links, not following links)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def parse_size(text: str) -> int:
    """``5G``, ``500M``, ``100K`` or bytes; ValueError otherwise."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"{text!r}: expected a size such as 5G, 500M or 100K") from None
    if value < 0:
        raise ValueError(f"{text!r}: a size cannot be negative")
    return int(value * units[unit])


@contextlib.contextmanager
def file_lock(path: Path, waiting: Callable[[], None] | None = None) -> Iterator[int]:
    """An exclusive flock on ``path`` (created if need be); yields its fd.

    ``waiting`` is called once if another process holds the lock.  Released
    when every holder of the open file has closed it (never unlocked
    explicitly, see :meth:`Cache.lock`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(f, fcntl.LOCK_EX)
        yield f.fileno()


@contextlib.contextmanager
def new_path(final: Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to fill; on success rename it to ``final``.

    On any exception (an interrupt too) the temporary is removed and ``final``
    is untouched, so readers see the old complete thing or the new one.  A
    file is created 0644 (mkstemp's 0600 would follow wheels and images
    everywhere); a directory must not exist at ``final`` yet.  Temporaries are
    named ``.tmp-*``: what an interrupted build leaves is easy to tell apart.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{final.name[:16]}-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=final.parent)
        os.fchmod(fd, 0o644)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        os.rename(tmp, final) if directory else os.replace(tmp, final)
    except BaseException:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with new_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
