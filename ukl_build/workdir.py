"""Mutable build directories in the cache (a kernel's O= directory): the one discipline
for what cannot be an immutable entry.

A work directory is used only under its exclusive lock (:meth:`Cache.workdir`).  What
in it depends on more than its key (a kernel's app-dependent outputs) is trusted only
when the directory's stamp names the inputs they were last verified against; else
those outputs are removed before the work, so the tool that remakes them (make) does
so because they are missing, never because of a timestamp.  A mark can say which copy
of a source the directory's objects came from, and the directory starts afresh when
that copy changes.  Nothing here rests on timestamps or on one build at a time.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ukl_build.files import atomic_write_text

STAMP = ".ukl-build-stamp"


@dataclass(frozen=True)
class WorkDir:
    """A work directory held under its lock (the lock's fd goes to the commands that
    work in it, so that they cannot outlive it)."""

    path: Path
    lock_fd: int
    stamp: str  # the inputs this use will verify its outputs against
    outputs: tuple[str, ...]  # glob patterns of the outputs that depend on them

    def restart_unless(self, mark: str, ident: str) -> bool:
        """Start the directory afresh (empty) unless its ``mark`` file says ``ident``;
        whether it did.  The mark then says ``ident``."""
        path = self.path / mark
        if path.is_file() and path.read_text() == ident:
            return False
        restarted = self.path.is_dir() and any(self.path.iterdir())
        if restarted:
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, ident)
        return restarted

    def remove_stale(self) -> int:
        """Unless the stamp names this use's inputs, take it away and remove the outputs
        that depend on them; how many files were removed."""
        stamp = self.path / STAMP
        if stamp.is_file() and stamp.read_text() == self.stamp:
            return 0
        stamp.unlink(missing_ok=True)
        removed = 0
        for pattern in self.outputs:
            for path in self.path.glob(pattern):
                if path.is_file() or path.is_symlink():
                    path.unlink()
                    removed += 1
        return removed

    def verified(self) -> None:
        """The outputs were made from this use's inputs and checked: say so."""
        atomic_write_text(self.path / STAMP, self.stamp)


def workdir_of(path: Path, lock_fd: int, stamp: str, outputs: Sequence[str]) -> WorkDir:
    path.mkdir(parents=True, exist_ok=True)
    return WorkDir(path, lock_fd, stamp, tuple(outputs))
