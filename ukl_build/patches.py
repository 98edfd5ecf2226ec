"""Stage 2: apply ukl-build's patch series for the tree's kernel series, with no fuzz."""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from ukl_build.cache import Cache
from ukl_build.errors import BuildError, SourceError
from ukl_build.files import digest, file_sha256
from ukl_build.progress import Reporter
from ukl_build.source import SourceTree

# Tools the kernel's Kconfig asks for by name (its rustc and pahole version probes,
# bindgen's) that no declared host package provides: make is told each is `false`, so
# the configuration (CONFIG_RUSTC_VERSION, CONFIG_PAHOLE_VERSION, ...) and every
# object after it is the same whether or not the host happens to have them.  Linux
# 6.12 records rustc's version in .config; without this a machine with a Rust
# toolchain on PATH built another kernel than one without (found by the build farm's
# fresh runner, whose PATH holds only the declared commands).
UNDECLARED_TOOLS = ("RUSTC=false", "BINDGEN=false", "PAHOLE=false")


@dataclass(frozen=True)
class Patch:
    name: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class PatchedTree:
    path: Path
    key: str
    release: str
    patches: tuple[Patch, ...]
    source: SourceTree
    kind: str = "trees"  # the cache entry: "sources" when there is no series

    def make(self, build: Path, *args: str) -> list[str]:
        """The command line of ``make`` in this tree, out of tree in ``build`` (O=)."""
        return ["make", "-C", str(self.path), f"O={build}", "ARCH=x86_64", *UNDECLARED_TOOLS,
                *args]

    def check(self, cache: Cache) -> None:
        """Before make reads the tree: compare it with what was recorded when it was
        made (cheap: only files whose size, mode or mtime changed are hashed), and
        make it again if it was changed.  Not on every build: a build that reuses
        its images never reads the tree."""
        cache.check_entry(self.kind, self.key)


def read_series(series_dir: Path) -> list[Patch]:
    """The patches named in ``series_dir/series``, in order (``#`` starts a comment)."""
    series = series_dir / "series"
    if not series.is_file():
        raise SourceError(f"{series}: no patch series for this kernel version")
    patches = []
    for lineno, line in enumerate(series.read_text().splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        path = series_dir / name
        if not path.is_file():
            raise SourceError(f"{series}:{lineno}: {name} does not exist")
        patches.append(Patch(name=name, path=path, sha256=file_sha256(path)))
    return patches


def touched_files(patch: Path) -> set[str]:
    """Paths (relative to the tree) that a -p1 patch modifies."""
    files = set()
    for line in patch.read_text(errors="replace").splitlines():
        m = re.match(r"^(?:---|\+\+\+) [ab]/(\S+)", line)
        if m:
            files.add(m.group(1))
    return files


def apply_patches(
    src: SourceTree, series_dir: Path, cache: Cache, reporter: Reporter
) -> PatchedTree:
    patches = read_series(series_dir)
    if not patches:
        return PatchedTree(src.path, src.key, src.release, (), src, kind="sources")
    key = digest("patched", src.key, [(p.name, p.sha256) for p in patches])

    def make(tmp: Path) -> None:
        tree = tmp / "tree"
        cache.check_entry("sources", src.key)  # what the copy will share
        reporter.stage("patch", f"applying {len(patches)} patches from {series_dir}")
        # Hard links make the copy cheap; a patched file gets its own inode first,
        # so the pristine tree is never written through.
        reporter.run(["cp", "-al", src.path, tree], step="patch (a hard-linked copy of the tree)")
        apply_series(tree, patches, f"Linux {src.release}", series_dir, reporter)
        read_only(tree)

    entry = cache.entry("trees", key, make, check=False, linked_from=("sources", src.key))
    return PatchedTree(entry / "tree", key, src.release, tuple(patches), src)


def apply_series(tree: Path, patches: list[Patch], what: str, series_dir: Path,
                 reporter: Reporter) -> None:
    """Apply ``patches`` in order to ``tree`` (a private copy) with ``patch -p1`` and no fuzz.

    A file about to be patched gets its own inode first, so a tree made of
    hard links to a pristine copy never writes through to it.
    """
    for p in patches:
        for rel in touched_files(p.path):
            f = tree / rel
            if f.is_file() and not f.is_symlink():
                copy = f.with_name(f.name + ".ukl-unlink")
                shutil.copy2(f, copy)
                copy.chmod(copy.stat().st_mode | 0o200)  # patch writes it
                os.replace(copy, f)
        proc = reporter.capture(
            ["patch", "-p1", "--forward", "--fuzz=0", "--no-backup-if-mismatch", "-s",
             "-i", p.path],
            step=f"patch {p.name}", cwd=tree, check=False)
        output = proc.text + proc.stderr
        reporter.log(proc.text)
        if proc.returncode != 0:
            raise BuildError(
                f"patch {p.name} does not apply cleanly to {what}:\n"
                + "\n".join("    " + ln for ln in output.splitlines()[:20]),
                hint=f"the series in {series_dir} targets a different tree",
            )


def read_only(tree: Path) -> None:
    """Take the write bits off every file (not the directories: the cache must still
    be able to remove the entry without root), so that an editor or a stray command
    refuses to change a cached tree; what root changes anyway the record check finds."""
    for dirpath, _, files in os.walk(tree):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o222:
                os.chmod(path, st.st_mode & ~0o222)
