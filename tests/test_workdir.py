"""Mutable work directories (ukl_build.workdir through Cache.workdir): a stamp decides
which outputs survive, a mark which copy of a source the objects came from."""

from __future__ import annotations

from pathlib import Path

from ukl_build.cache import Cache


def test_outputs_stay_only_under_the_stamp_they_were_verified_against(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    with cache.in_use() as held, \
            held.workdir("kbuild", "k", "payload-1", ("vmlinux", "usr/*.o")) as w:
        for name in ("vmlinux", "usr/a.o", "kept.o"):
            (w.path / name).parent.mkdir(parents=True, exist_ok=True)
            (w.path / name).write_text(name)
        assert w.remove_stale() == 2  # no stamp yet: the outputs are not trusted
        (w.path / "vmlinux").write_text("new")
        w.verified()
        assert w.remove_stale() == 0
    with cache.in_use() as held, held.workdir("kbuild", "k", "payload-1", ("vmlinux",)) as w:
        assert w.remove_stale() == 0 and (w.path / "vmlinux").read_text() == "new"
    with cache.in_use() as held, held.workdir("kbuild", "k", "payload-2", ("vmlinux",)) as w:
        assert w.remove_stale() == 1  # another payload: relinked, never trusted by mtime
        assert not (w.path / "vmlinux").exists() and (w.path / "kept.o").is_file()
        assert w.remove_stale() == 0  # the stamp is gone until the new outputs are verified


def test_a_new_copy_of_the_source_starts_the_directory_afresh(tmp_path: Path) -> None:
    with Cache(tmp_path).workdir("kbuild", "k", "s", ()) as w:
        assert not w.restart_unless(".tree", "copy-1")  # empty: nothing to restart
        (w.path / "obj.o").write_text("x")
        assert not w.restart_unless(".tree", "copy-1")
        assert (w.path / "obj.o").is_file()
        assert w.restart_unless(".tree", "copy-2")
        assert sorted(p.name for p in w.path.iterdir()) == [".tree"]


def test_a_lookup_touches_nothing(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    assert cache.location("sources", "abc") == cache.root / "sources" / "abc"
    assert not cache.root.exists()  # no tag, no lock, no directory
