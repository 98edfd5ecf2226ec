"""The shared cache: content-addressed entries, created atomically under a file lock.

Layout under the cache root (``$UKL_BUILD_CACHE``, else ``$XDG_CACHE_HOME/ukl-build``)::

    downloads/<sha256>.<ext>     verified source archives (kernel, apps, musl)
    downloads/debian-<pkg>-<k>.json  apt's answer for a source package, by apt index state
    verified/<key>/sha256        a file that matched dpkg's md5 list, by package, path and md5
    sources/<key>/tree/          extracted archives, git exports, copied directories
    git/<key>/                   bare repositories that git sources are fetched into
    trees/<key>/                 patched kernel trees
    sysroots/<key>/              nolibc + UAPI headers of one tree
    libcs/<key>/sysroot/         musl builds (and <key>.specs beside each)
    deps/<key>/prefix/           libraries apps depend on, built and installed (include/, lib/)
    kconfig/<key>/.config        resolved kernel configurations
    kbuild/<key>/                out-of-tree kernel build dirs (O=), one per .config
    images/<key>/                verified bzImage + vmlinux of one build dir and app
    locks/                       the flock files of the entries above (KIND-KEY.lock while
                                 one is made; KIND-KEY.use, shared, while builds use it)
    ccache/                      compiler cache for kernel builds
    bin/kernel-cc-<hash>         the kernel's compiler script (ccache in depend mode)

An entry is built in a temporary sibling and renamed into place, so an
interrupted build leaves at most a ``.tmp-*`` directory that the next build
ignores and ``clean`` removes; it never leaves a half-made entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ukl_build.errors import ConfigError, UklError
from ukl_build.files import file_lock, mib, new_path, tree_size
from ukl_build.records import RECORD, damage_at, entry_content, write_record
from ukl_build.workdir import WorkDir, workdir_of


def default_root() -> Path:
    env = os.environ.get("UKL_BUILD_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser().resolve() / "ukl-build"


def root_origin() -> str:
    """Where the cache's path came from, for messages."""
    if os.environ.get("UKL_BUILD_CACHE"):
        return "UKL_BUILD_CACHE"
    return "XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME") else "HOME (~/.cache/ukl-build)"


# Characters that kbuild's Makefiles (and make itself) cannot take in a path: the
# kernel tree and its build dirs live in the cache.
_MAKE_UNSAFE = frozenset(" \t\n:#$=%\\\"';,*?[](){}|&<>!`")


def check_root(root: Path) -> None:
    """Refuse a cache path the kernel build cannot use, before any work is done."""
    bad = sorted({c for c in str(root) if c in _MAKE_UNSAFE})
    if bad:
        raise ConfigError(
            f"cache path {root} (from {root_origin()}) contains {' '.join(map(repr, bad))}: "
            "the kernel's Makefiles cannot build in such a path",
            hint="set UKL_BUILD_CACHE to a directory whose path has none of these characters")


# Entries `clean --max-size` may evict, least recently used first.  Downloads and git
# mirrors stay (sources are verified against them; `clean --cache` removes everything).
EVICTABLE = ("verified", "sources", "trees", "sysroots", "libcs", "deps", "kconfig", "kbuild",
             "images")


class Cache:
    """The cache at ``root``.  A view made by :meth:`in_use` also holds every entry it
    hands out (a shared lock on ``locks/KIND-KEY.use``) until its ``with`` ends, so a
    concurrent ``clean --max-size`` passes over them."""

    def __init__(self, root: Path | None = None,
                 holder: contextlib.ExitStack | None = None,
                 report: Callable[[str], None] | None = None) -> None:
        self.root = (root or default_root()).resolve()
        self._holder = holder
        self._held: set[tuple[str, str]] = set()
        self._report = report or (lambda message: None)
        self._makers: dict[tuple[str, str], Callable[[Path], None]] = {}
        self._linked_from: dict[tuple[str, str], tuple[str, str]] = {}
        self._checked: set[tuple[str, str]] = set()

    @contextlib.contextmanager
    def in_use(self, report: Callable[[str], None] | None = None) -> Iterator[Cache]:
        """A view of this cache that holds what it hands out until the block ends;
        ``report`` hears of damaged entries it discards."""
        with contextlib.ExitStack() as stack:
            yield Cache(self.root, stack, report)

    def _hold(self, kind: str, key: str) -> None:
        """Hold ``kind/key`` (shared) for the holder's lifetime, and mark it used now.

        Taken before the entry is looked at: an eviction in progress finishes
        first, and the caller then finds the entry gone and makes it again.
        """
        if self._holder is None or (kind, key) in self._held:
            return
        path = self.lock_file(kind, key, "use")
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "w")  # noqa: SIM115  # closed by the holder
        self._holder.callback(f.close)
        fcntl.flock(f, fcntl.LOCK_SH)
        self._held.add((kind, key))
        with contextlib.suppress(OSError):  # the recency that eviction orders by
            os.utime(self.root / kind / key)

    def lock_file(self, kind: str, key: str, what: str = "lock") -> Path:
        """``locks/KIND-KEY.lock`` (held while the entry is made) or ``.use`` (held,
        shared, while builds use it).  The cache is marked as ours before anything
        goes into it."""
        self.mark()
        return self.root / "locks" / f"{kind}-{key}.{what}"

    def mark(self) -> None:
        """Create the root with its ``CACHEDIR.TAG`` (the Cache Directory Tagging
        convention: backup tools skip the directory), which ``clean --cache`` requires."""
        tag = self.root / CACHE_TAG
        if tag.is_file():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(tag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(_TAG_TEXT)

    def is_marked(self) -> bool:
        try:
            return (self.root / CACHE_TAG).read_text().startswith(_TAG_TEXT)
        except (OSError, UnicodeDecodeError):
            return False

    def location(self, kind: str, key: str) -> Path:
        """Where entry ``kind/key`` is (or would be); nothing is held or touched."""
        return self.root / kind / key

    def hold(self, kind: str, key: str) -> Path:
        """Hold entry ``kind/key`` for this view's lifetime (an eviction passes over it)
        and mark it used now; its path."""
        self._hold(kind, key)
        return self.root / kind / key

    @contextlib.contextmanager
    def workdir(self, kind: str, key: str, stamp: str,
                outputs: Sequence[str]) -> Iterator[WorkDir]:
        """A mutable work directory ``kind/key`` (see :mod:`ukl_build.workdir`), held and
        exclusively locked for the block: ``stamp`` names the inputs its ``outputs``
        (glob patterns) will be verified against."""
        path = self.hold(kind, key)
        with self.lock(kind, key) as fd:
            yield workdir_of(path, fd, stamp, outputs)

    @contextlib.contextmanager
    def lock(self, kind: str, key: str) -> Iterator[int]:
        """An exclusive lock on one entry, held across processes; yields its fd.

        The lock belongs to the open file, not to this process: a child given
        the fd (``Reporter.run(keep_fds=...)``) keeps it held until it exits,
        so work started under the lock cannot outlive it.
        """
        with file_lock(self.lock_file(kind, key)) as fd:
            yield fd

    def entry(self, kind: str, key: str, make: Callable[[Path], None],
              check: bool = True, linked_from: tuple[str, str] | None = None) -> Path:
        """Return the entry ``kind/key``, creating it with ``make(tmpdir)`` if missing.

        ``make`` fills a fresh temporary directory; its record (every file's path,
        mode, size, mtime and SHA-256) is written into it, and then it is renamed
        into place; on any exception it is removed.  A reused entry is checked
        against its record first (``check``: every file hashed; else only that the
        record is there, for entries too large to hash on every use, which the
        caller checks with :meth:`check_entry` when it is about to read them).  A
        damaged or incomplete entry is reported, discarded and made again.

        ``linked_from``: the entry (kind, key) whose files ``make`` hard-links into
        this one (a patched tree is a linked copy of its source, checked just before):
        a file that is one of that entry's files, with the size and mtime its record
        gives, takes the recorded SHA-256 instead of being read again.
        """
        self._makers[(kind, key)] = make
        if linked_from is not None:
            self._linked_from[(kind, key)] = linked_from
        final, sound = self._renew(kind, key, "content" if check else "record", make)
        if not sound:
            self._checked.add((kind, key))  # made now: check_entry need not look again
        return final

    def reusable(self, kind: str, key: str) -> bool:
        """Whether entry ``kind/key`` exists and holds what its record says (every file
        hashed).  A damaged one is reported and discarded: the caller makes it again."""
        final, _ = self._renew(kind, key, "content", None)
        return final.is_dir()  # sound, or made again meanwhile by another build

    def check_entry(self, kind: str, key: str, level: str = "stat") -> None:
        """Check an entry taken with ``check=False`` before reading it (once per view):
        files whose size, mode or mtime changed are hashed against the record
        (``level="content"``: every file); a damaged entry is reported, discarded and
        made again with the ``make`` it was taken with."""
        if (kind, key) in self._checked:
            return

        def make(tmp: Path) -> None:
            maker = self._makers.get((kind, key))
            if maker is None:  # pragma: no cover - every caller took the entry first
                raise UklError(f"cache entry {kind}/{key} is damaged")
            maker(tmp)

        self._renew(kind, key, level, make)
        self._checked.add((kind, key))

    def check_file(self, kind: str, key: str, rel: str) -> None:
        """Check one file of an entry taken with ``check=False`` (hashed against the
        record) before reading it alone; if it differs, the whole entry is checked,
        discarded and made again as :meth:`check_entry` does."""
        if (kind, key) in self._checked:
            return
        entry = self.hold(kind, key)
        try:
            want = json.loads((entry / RECORD).read_text())["files"][rel][3]
            sound = entry_content(str(entry / rel), os.lstat(entry / rel)) == want
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            sound = False
        if not sound:
            self.check_entry(kind, key, "content")

    def _renew(self, kind: str, key: str, level: str,
               make: Callable[[Path], None] | None) -> tuple[Path, bool]:
        """The one path of every check: ``kind/key`` checked at ``level`` ("content":
        every file hashed; "stat": files whose size, mode or mtime changed; "record":
        only that the record is there).  A damaged entry is reported and, under its
        make lock (where another build may have made it again meanwhile), discarded;
        a missing one is then made with ``make`` (if given) and recorded.  Returns the
        entry's path and whether it was there and sound at first."""
        final = self.hold(kind, key)
        if final.is_dir():
            why = damage_at(final, level)
            if why is None:
                return final, True
            self._report(f"{kind}/{key[:16]}: {why}; discarding it and making it again")
        elif make is None:
            return final, False
        with self.lock(kind, key):
            if final.is_dir() and damage_at(final, level) is not None:
                self._discard(final)
            if not final.is_dir() and make is not None:
                with new_path(final, directory=True) as tmp:
                    make(tmp)
                    donor = self._linked_from.get((kind, key))
                    write_record(tmp, self.root.joinpath(*donor) if donor else None)
        return final, False

    def _discard(self, path: Path) -> None:
        """Remove an entry (held under its make lock by the caller) out of readers' way:
        renamed at once, removed afterwards (a removal killed halfway is finished by
        the next eviction)."""
        doomed = path.with_name(f"{_EVICTING}{path.name[:16]}-{os.getpid()}")
        os.rename(path, doomed)  # gone for readers at once; removal may take a while
        shutil.rmtree(doomed, ignore_errors=True)

    def evict(self, max_bytes: int) -> tuple[list[tuple[str, int]], int]:
        """Remove least recently used entries until the evictable ones take at most
        ``max_bytes``.  An entry in use (held by a build, or being made) is passed over.

        Returns the removed entries (``kind/key``, bytes) and the bytes that remain.
        """
        found = []
        for kind in EVICTABLE:
            d = self.root / kind
            if d.is_dir():
                _remove_abandoned(self, kind)
                for p in d.iterdir():
                    if p.name.startswith("."):
                        continue
                    try:  # another clean may have taken it since iterdir() saw it
                        st = p.stat()
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        found.append((st.st_mtime, kind, p))
        sizes = {p: tree_size(p) for _, _, p in found}
        total = sum(sizes.values())
        removed: list[tuple[str, int]] = []
        for _, kind, path in sorted(found, key=lambda e: e[0]):
            if total <= max_bytes:
                break
            if self._remove_unless_used(kind, path):
                removed.append((f"{kind}/{path.name}", sizes[path]))
                total -= sizes[path]
        return removed, total

    def _remove_unless_used(self, kind: str, path: Path) -> bool:
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        with open(self.lock_file(kind, path.name, "use"), "w") as use, \
                open(self.lock_file(kind, path.name), "w") as make:
            try:
                fcntl.flock(use, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(make, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a build holds it
            if not path.is_dir():
                return False
            self._discard(path)
        return True

    def _remove_entries(self) -> list[str]:
        """Remove every evictable entry no build holds; return those kept."""
        kept = []
        for kind in EVICTABLE:
            d = self.root / kind
            if not d.is_dir():
                continue
            _remove_abandoned(self, kind)
            for p in sorted(d.iterdir()):
                if p.name.startswith("."):
                    kept.append(f"{kind}/{p.name}")  # being made by a running build
                elif p.is_dir() and not self._remove_unless_used(kind, p):
                    kept.append(f"{kind}/{p.name}")
        return kept

    def clean(self) -> list[str]:
        """Remove the whole cache, entry by entry, each only if no build holds it.

        Refused (ConfigError) unless the root carries our ``CACHEDIR.TAG``: the
        path comes from the environment, and whatever else it names is not ours.
        Returns the entries kept because a build holds them; while any is held, the
        parts builds use without entry locks (downloads, git mirrors, ccache, the
        locks and the tag) stay too.
        """
        if not self.root.exists():
            return []
        if not self.is_marked():
            raise ConfigError(
                f"{self.root} (from {root_origin()}): not a ukl-build cache (no {CACHE_TAG} "
                "written by ukl-build in it); nothing removed",
                hint="point UKL_BUILD_CACHE at the cache, or remove the directory yourself")
        kept = self._remove_entries()
        if kept:
            return kept
        for p in sorted(self.root.iterdir()):
            if p.name not in (CACHE_TAG, "locks"):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        shutil.rmtree(self.root / "locks", ignore_errors=True)
        (self.root / CACHE_TAG).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # empty now, unless something arrived meanwhile
            self.root.rmdir()
        return []


CACHE_TAG = "CACHEDIR.TAG"
_TAG_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
             "# This file is a cache directory tag created by ukl-build.\n"
             "# For information about cache directory tags, see https://bford.info/cachedir/\n")


_EVICTING = ".tmp-evict-"


def _remove_abandoned(cache: Cache, kind: str) -> None:
    """Finish what killed processes left under ``kind``: removals an eviction began
    (``.tmp-evict-*`` of a process that is gone), and the ``.tmp-KEY16-*``
    temporaries of makers that are gone.

    A maker holds the entry's make lock (``locks/KIND-KEY.lock``) until it renames
    its temporary into place or removes it; a temporary whose lock nobody holds was
    left by a killed build.  Decided by the lock, never by a timestamp.
    """
    kind_dir = cache.root / kind
    for p in kind_dir.glob(f"{_EVICTING}*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
    for tmp in kind_dir.glob(".tmp-*"):
        if tmp.name.startswith(_EVICTING):
            continue
        prefix = tmp.name[len(".tmp-"):].rsplit("-", 1)[0]
        locks = list((cache.root / "locks").glob(f"{kind}-{prefix}*.lock"))
        if not locks or not any(_held(lock) for lock in locks):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _held(lock: Path) -> bool:
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def eviction_summary(removed: list[tuple[str, int]], left: int, limit: int) -> str:
    """One line on what :meth:`Cache.evict` did."""
    freed = sum(size for _, size in removed)
    return (f"trimmed to {mib(limit)}: removed {len(removed)} entries "
            f"({mib(freed)}), {mib(left)} left in entries")


