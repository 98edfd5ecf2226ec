"""clean --max-size: least recently used entries go first; entries in use are never removed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ukl_build.cache import Cache, eviction_summary
from ukl_build.errors import ConfigError
from ukl_build.files import parse_size
from ukl_build.settings import load_settings


def make_entry(cache: Cache, kind: str, key: str, size: int, age: float) -> Path:
    path = cache.root / kind / key
    path.mkdir(parents=True)
    (path / "data").write_bytes(os.urandom(size))
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_least_recently_used_go_first_and_used_entries_stay(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    old = make_entry(cache, "trees", "old", 1 << 20, 300)
    mid = make_entry(cache, "kbuild", "mid", 1 << 20, 200)
    new = make_entry(cache, "images", "new", 1 << 20, 100)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "x.tar.xz").write_bytes(b"k" * 4096)  # never evicted
    with cache.in_use() as held:
        held.hold("trees", "old")  # a build holds the oldest entry
        removed, left = cache.evict(2 << 20)
    assert [name for name, _ in removed] == ["kbuild/mid"]
    assert old.is_dir() and not mid.exists() and new.is_dir()
    assert left <= 2 << 20 + 16384
    assert (tmp_path / "downloads" / "x.tar.xz").exists()
    # Released.  Using it made "old" the most recently used: "new" goes now.
    removed, _ = cache.evict(1 << 20)
    assert [name for name, _ in removed] == ["images/new"] and old.is_dir()


def test_an_entry_being_made_is_not_evicted(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    make_entry(cache, "kbuild", "busy", 1 << 16, 100)
    with cache.lock("kbuild", "busy"):  # what build_kernel holds during make
        removed, _ = cache.evict(0)
    assert removed == []


def test_use_marks_recency(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    a = make_entry(cache, "sources", "a", 1 << 16, 500)
    make_entry(cache, "sources", "b", 1 << 16, 400)
    with cache.in_use() as held:
        held.hold("sources", "a")  # used just now: b is the least recently used
    assert a.stat().st_mtime > time.time() - 60
    removed, _ = cache.evict(1 << 16)
    assert [name for name, _ in removed] == ["sources/b"]


def test_a_concurrent_clean_waits_out_no_build(tmp_path: Path) -> None:
    """A clean in another process while this one holds an entry: it skips it at once."""
    cache = Cache(tmp_path)
    kept = make_entry(cache, "trees", "held", 1 << 18, 100)
    with cache.in_use() as held:
        held.hold("trees", "held")
        proc = subprocess.run([sys.executable, "-m", "ukl_build", "clean", "--max-size", "0"],
                              env={**os.environ, "UKL_BUILD_CACHE": str(tmp_path)},
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert kept.is_dir() and "removed 0 entries" in proc.stdout, proc.stdout


@pytest.mark.parametrize(("text", "value"), [("5G", 5 << 30), ("500M", 500 << 20),
                                             ("100k", 100 << 10), ("1.5GiB", 3 << 29),
                                             ("4096", 4096)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value
    with pytest.raises(ValueError, match="expected a size"):
        parse_size("lots")


def test_an_eviction_killed_halfway_is_finished_by_the_next(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    proc = subprocess.Popen(["true"])
    proc.wait()
    abandoned = tmp_path / "kbuild" / f".tmp-evict-abcdef-{proc.pid}"
    (abandoned / "sub").mkdir(parents=True)
    ours = tmp_path / "kbuild" / f".tmp-evict-abcdef-{os.getpid()}"  # its owner lives
    ours.mkdir()
    cache.evict(1 << 30)
    assert not abandoned.exists() and ours.is_dir()


def test_eviction_summary() -> None:
    assert eviction_summary([("kbuild/a", 3 << 20), ("trees/b", 1 << 20)], 5 << 20, 6 << 20) == (
        "trimmed to 6.0 MiB: removed 2 entries (4.0 MiB), 5.0 MiB left in entries")


@pytest.mark.parametrize(("key", "value", "error"), [
    ("cache.max-size", "lots", r"-C cache.max-size: 'lots': expected a size"),
    ("ccache.max-size", "-1G", r"-C ccache.max-size: '-1G': a size cannot be negative"),
    ("jobs", "0", r"-C jobs: 0 jobs; at least 1"),
    ("distcc.hosts", "a/2 b/2", r"-C distcc.hosts: 'a/2 b/2' is not one distcc host"),
])
def test_farm_settings_are_checked(tmp_path: Path, key: str, value: str, error: str) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\nversion = "1"\n[tool.ukl-build]\nsources = ["a.c"]\n')
    with pytest.raises(ConfigError, match=error):
        load_settings(tmp_path, {key: value})


def test_an_entry_another_clean_took_meanwhile_is_passed_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two cleans at once: what one lists may be gone when the other looks at it."""
    cache = Cache(tmp_path)
    kept = make_entry(cache, "kbuild", "a", 1 << 16, 100)
    ghost = tmp_path / "kbuild" / "taken-by-another-clean"
    real = Path.iterdir
    monkeypatch.setattr(Path, "iterdir",
                        lambda self: iter([*real(self), ghost] if self.name == "kbuild"
                                          else real(self)))
    removed, _ = cache.evict(1 << 20)
    assert removed == [] and kept.is_dir()
    removed, _ = cache.evict(0)
    assert [name for name, _ in removed] == ["kbuild/a"]


def test_two_cleans_at_once_both_succeed(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    for i in range(40):
        make_entry(cache, "trees", f"e{i:02}", 1 << 12, 100 + i)
    env = {**os.environ, "UKL_BUILD_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-m", "ukl_build", "clean", "--max-size", "0"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert list((tmp_path / "trees").iterdir()) == []
    assert sum(out.count("removed trees/") for out, _ in outs) == 40


def _clean_cache(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ukl_build", "clean", "--cache"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "UKL_BUILD_CACHE": str(root)})


def test_clean_cache_refuses_a_directory_that_is_not_ours(tmp_path: Path) -> None:
    foreign = tmp_path / "somebody-elses"
    foreign.mkdir()
    (foreign / "important.txt").write_text("keep me")
    proc = _clean_cache(foreign)
    assert proc.returncode != 0
    assert f"{foreign} (from UKL_BUILD_CACHE): not a ukl-build cache (no CACHEDIR.TAG" \
        in proc.stderr, proc.stderr
    assert (foreign / "important.txt").read_text() == "keep me"


def test_clean_cache_removes_only_what_no_build_holds(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    cache.mark()  # what every build does before it puts anything in
    assert (cache.root / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d17")
    held_entry = make_entry(cache, "trees", "held", 4096, 10)
    free_entry = make_entry(cache, "images", "free", 4096, 10)
    (cache.root / "ccache").mkdir()
    with cache.in_use() as build:
        build.hold("trees", "held")  # a running build holds it
        proc = _clean_cache(cache.root)
        assert proc.returncode == 1, proc.stderr
        assert "kept trees/held" in proc.stderr and "images/free" not in proc.stderr
        assert held_entry.is_dir() and not free_entry.exists()
        assert (cache.root / "ccache").is_dir()  # the build may still be compiling
    proc = _clean_cache(cache.root)  # the build is over
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"removed {cache.root}\n" and not cache.root.exists()


def test_a_killed_makers_temporary_goes_but_not_a_live_ones(tmp_path: Path) -> None:
    """What SIGKILL (or an old SIGTERM) left: `.tmp-KEY16-*` with nobody holding the
    entry's lock.  Decided by the lock, not by age."""
    cache = Cache(tmp_path)
    dead = cache.root / "sources" / ".tmp-0123456789abcdef-abcd1234"
    live = cache.root / "sources" / ".tmp-fedcba9876543210-efgh5678"
    for tmp in (dead, live):
        (tmp / "tree").mkdir(parents=True)
    with cache.lock("sources", "0123456789abcdef" + "0" * 48):
        pass  # its maker took the lock and is gone
    with cache.lock("sources", "fedcba9876543210" + "1" * 48):  # still making it
        cache.evict(0)
    assert not dead.exists() and live.is_dir()


class _Maker:
    """An entry's make function that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, tmp: Path) -> None:
        self.calls += 1
        (tmp / "bzImage").write_bytes(b"k" * 100_000)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "vmlinux").write_bytes(b"v" * 1000)


@pytest.mark.parametrize("damage_it, why", [
    (lambda e: _flip(e / "bzImage", 5000), "bzImage changed content"),
    (lambda e: (e / "bzImage").write_bytes(b"k" * 10), "bzImage changed size (100000 -> 10"),
    (lambda e: (e / "sub" / "vmlinux").unlink(), "sub/vmlinux is missing"),
    (lambda e: (e / "extra").write_text("x"), "extra was not in it when it was made"),
    (lambda e: (e / ".ukl-entry.json").unlink(), ".ukl-entry.json is missing or unreadable"),
])
def test_a_damaged_entry_is_reported_discarded_and_made_again(
        tmp_path: Path, damage_it: Callable[[Path], None], why: str) -> None:
    heard: list[str] = []
    make = _Maker()
    with Cache(tmp_path).in_use(heard.append) as cache:
        entry = cache.entry("images", "k" * 64, make)
    damage_it(entry)
    with Cache(tmp_path).in_use(heard.append) as cache:
        again = cache.entry("images", "k" * 64, make)
    assert make.calls == 2 and again == entry
    assert (entry / "bzImage").read_bytes() == b"k" * 100_000
    assert heard == [f"images/{'k' * 16}: {why}" + heard[0].split(why, 1)[1]]
    assert "; discarding it and making it again" in heard[0]
    with Cache(tmp_path).in_use(heard.append) as cache:  # sound now: reused as it is
        cache.entry("images", "k" * 64, make)
    assert make.calls == 2 and len(heard) == 1


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_big_entry_is_checked_when_read_and_a_touch_is_no_damage(tmp_path: Path) -> None:
    heard: list[str] = []
    make = _Maker()
    with Cache(tmp_path).in_use(heard.append) as cache:
        entry = cache.entry("trees", "t" * 64, make, check=False)
    os.utime(entry / "bzImage", (1, 1))  # same bytes, another mtime: hashed, still sound
    with Cache(tmp_path).in_use(heard.append) as cache:
        cache.entry("trees", "t" * 64, make, check=False)
        cache.check_entry("trees", "t" * 64)
    assert make.calls == 1 and heard == []
    _flip(entry / "sub" / "vmlinux", 10)  # an edit in place: caught when the tree is read
    with Cache(tmp_path).in_use(heard.append) as cache:
        cache.entry("trees", "t" * 64, make, check=False)
        assert make.calls == 1  # not on taking it
        cache.check_entry("trees", "t" * 64)
    assert make.calls == 2 and "sub/vmlinux changed content" in heard[0]
    assert (entry / "sub" / "vmlinux").read_bytes() == b"v" * 1000


def test_one_file_read_alone_is_hashed_and_the_entry_healed(tmp_path: Path) -> None:
    """check_file: musl's VERSION is read before its source tree is (which happens only
    when musl is built); that one file is hashed, mtime kept or not."""
    heard: list[str] = []
    make = _Maker()
    with Cache(tmp_path).in_use(heard.append) as cache:
        entry = cache.entry("sources", "s" * 64, make, check=False)
    with Cache(tmp_path).in_use(heard.append) as cache:
        cache.entry("sources", "s" * 64, make, check=False)
        cache.check_file("sources", "s" * 64, "bzImage")
    assert make.calls == 1 and heard == []
    st = (entry / "bzImage").stat()
    _flip(entry / "bzImage", 5)
    os.utime(entry / "bzImage", ns=(st.st_atime_ns, st.st_mtime_ns))
    with Cache(tmp_path).in_use(heard.append) as cache:
        cache.entry("sources", "s" * 64, make, check=False)
        cache.check_file("sources", "s" * 64, "bzImage")
    assert make.calls == 2 and "bzImage changed content" in heard[0]
    assert (entry / "bzImage").read_bytes() == b"k" * 100_000


def test_patched_trees_are_read_only(tmp_path: Path) -> None:
    from ukl_build.patches import read_only

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.c").write_text("int x;")
    (tmp_path / "d" / "script").write_text("#!/bin/sh")
    (tmp_path / "d" / "script").chmod(0o755)
    read_only(tmp_path)
    assert stat.S_IMODE((tmp_path / "d" / "f.c").stat().st_mode) == 0o444
    assert stat.S_IMODE((tmp_path / "d" / "script").stat().st_mode) == 0o555
    assert (tmp_path / "d").stat().st_mode & 0o200  # the cache can still remove the entry


def test_a_linked_copy_takes_its_sources_hashes(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A patched tree (hard links to its source entry, patched files given their own
    inodes) is recorded with the source's hashes for the files they share, read only
    for the others; a source file changed since its record is read again."""
    import ukl_build.records as cache_mod  # where an entry's files are hashed

    def source(tmp: Path) -> None:
        (tmp / "tree").mkdir()
        for name in ("a.c", "b.c", "c.c"):
            (tmp / "tree" / name).write_text(name * 1000)

    with Cache(tmp_path).in_use() as cache:
        src = cache.entry("sources", "s" * 64, source)
        before = (src / "tree/c.c").stat()
        (src / "tree/c.c").write_text("c.c" * 999 + "X.c")  # damage the record does not know
        os.utime(src / "tree/c.c", ns=(before.st_atime_ns, before.st_mtime_ns + 1))
        hashed: list[str] = []
        real = cache_mod.file_sha256
        monkeypatch.setattr(cache_mod, "file_sha256",
                            lambda p: hashed.append(Path(p).name) or real(p))

        def linked(tmp: Path) -> None:
            subprocess.run(["cp", "-al", str(src / "tree"), str(tmp / "tree")], check=True)
            (tmp / "tree/b.c").unlink()  # patched: a file of its own
            (tmp / "tree/b.c").write_text("patched")

        tree = cache.entry("trees", "t" * 64, linked, check=False, linked_from=("sources", "s" * 64))
    assert sorted(hashed) == ["b.c", "c.c"]
    monkeypatch.undo()
    assert cache_mod.damage(tree, content=True) is None  # the record is the files' truth
