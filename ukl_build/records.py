"""What a cache entry held when it was made (its record: every path's mode, size,
mtime and SHA-256), and the checks of an entry against it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ukl_build.files import file_sha256

RECORD = ".ukl-entry.json"  # in every entry made by Cache.entry: what it held when made


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every file, link and directory under ``root`` (not the record), as
    (path relative to ``root``, lstat).  80,000 files in about a second."""
    stack = [(str(root), "")]
    while stack:
        path, prefix = stack.pop()
        with os.scandir(path) as it:
            for e in it:
                rel = prefix + e.name
                if rel == RECORD:
                    continue
                st = e.stat(follow_symlinks=False)
                yield rel, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append((e.path, rel + "/"))


def entry_content(path: str, st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "-> " + os.readlink(path)
    if stat.S_ISREG(st.st_mode):
        return file_sha256(Path(path))
    return ""


def write_record(entry: Path, linked_from: Path | None = None) -> None:
    """Record what ``entry`` holds: per path, [mode, size, mtime_ns, sha256 or link].

    ``linked_from``: an entry whose files ``entry`` holds hard links to; a file that
    is one of them (same device and inode) with the size and mtime of its record
    takes the recorded SHA-256 (a patched kernel tree: 1.5 GB not read again)."""
    known = _recorded_inodes(linked_from) if linked_from is not None else {}
    files = {}
    for rel, st in _walk(entry):
        same = known.get((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)) \
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 else None
        files[rel] = [st.st_mode, st.st_size, st.st_mtime_ns,
                      same if same is not None else entry_content(str(entry / rel), st)]
    (entry / RECORD).write_text(json.dumps({"version": 1, "files": files}, sort_keys=True))


def _recorded_inodes(entry: Path) -> dict[tuple[int, int, int, int], str]:
    """``entry``'s linked regular files whose size and mtime are what its record says,
    by (device, inode, size, mtime): their recorded SHA-256.  Empty when the record
    cannot be read (then every file is hashed)."""
    try:
        record = json.loads((entry / RECORD).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    known = {}
    for rel, st in _walk(entry):
        want = record.get(rel)
        if (want is not None and stat.S_ISREG(st.st_mode) and st.st_nlink > 1
                and want[1] == st.st_size and want[2] == st.st_mtime_ns):
            known[(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)] = want[3]
    return known


def damage_at(entry: Path, level: str) -> str | None:
    if level == "record":
        return None if (entry / RECORD).is_file() else \
            f"{RECORD} is missing or unreadable (an incomplete entry)"
    return damage(entry, content=level == "content")


def damage(entry: Path, content: bool) -> str | None:
    """What is wrong with ``entry`` against its record, or None.

    ``content``: every file is hashed.  Else a file is hashed only when its mode,
    size or mtime changed (a touch that kept the bytes is no damage); an edit that
    also restored the mtime goes unseen (the check is against accidents, not a
    security boundary: the cache's owner can change anything in it).
    """
    try:
        record = json.loads((entry / RECORD).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{RECORD} is missing or unreadable (an incomplete entry)"
    seen = set()
    for rel, st in _walk(entry):
        seen.add(rel)
        want = record.get(rel)
        if want is None:
            return f"{rel} was not in it when it was made"
        mode, size, mtime, digest_ = want
        if (st.st_mode | 0o222) != (mode | 0o222):  # write bits: trees are made read-only
            return f"{rel} changed type or mode"
        if stat.S_ISDIR(mode):
            continue
        if st.st_size != size:
            return f"{rel} changed size ({size} -> {st.st_size} bytes)"
        if (content or st.st_mtime_ns != mtime) and entry_content(str(entry / rel), st) != digest_:
            return f"{rel} changed content (SHA-256 no longer what was recorded)"
    missing = sorted(set(record) - seen)
    if missing:
        return f"{missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    return None
