"""Kernel source fetching: verification, safe extraction, caching; all on small fake trees."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ukl_build import source
from ukl_build.cache import Cache
from ukl_build.errors import SourceError
from ukl_build.progress import Reporter
from ukl_build.settings import AppSourceSettings, GitSettings, KernelSettings
from ukl_build.source import AppSource, _verify_dpkg_md5, fetch_app_source, fetch_source

MAKEFILE = b"VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 99\nEXTRAVERSION =\n"


def make_tarball(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                name, data = m
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return path


def good_tarball(path: Path) -> Path:
    return make_tarball(path, [("linux-6.1.99/Makefile", MAKEFILE),
                               ("linux-6.1.99/init/main.c", b"int x;\n")])


def fetch(kernel: KernelSettings, tmp_path: Path) -> tuple:  # type: ignore[type-arg]
    cache = Cache(tmp_path / "cache")
    with Reporter(None) as r:
        return fetch_source(kernel, tmp_path, cache, r), cache


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_local_tarball_extracted_and_cached(tmp_path: Path) -> None:
    tb = good_tarball(tmp_path / "linux.tar.gz")
    tree, _ = fetch(KernelSettings(path=str(tb), sha256=sha(tb)), tmp_path)
    assert tree.release == "6.1.99"
    assert (tree.path / "init/main.c").read_text() == "int x;\n"
    again, _ = fetch(KernelSettings(path=str(tb)), tmp_path)
    assert again.path == tree.path and again.key == tree.key


def test_local_tarball_wrong_sha256(tmp_path: Path) -> None:
    tb = good_tarball(tmp_path / "linux.tar.gz")
    with pytest.raises(SourceError, match="sha256 mismatch"):
        fetch(KernelSettings(path=str(tb), sha256="0" * 64), tmp_path)
    assert not list((tmp_path / "cache").glob("sources/*"))



def test_dpkg_verification_is_cached_by_the_recorded_checksum(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Debian tarball is read once per checksum dpkg recorded, not once per build."""
    tb = good_tarball(tmp_path / "linux-source.tar.gz")
    info = tmp_path / "info"
    info.mkdir()
    md5 = hashlib.md5(tb.read_bytes()).hexdigest()
    (info / "linux-source-6.1.md5sums").write_text(f"{md5}  {str(tb).lstrip('/')}\n")
    cache = Cache(tmp_path / "cache")
    with Reporter(None) as r:
        first = _verify_dpkg_md5(tb, "linux-source-6.1", cache, r, info)
        assert first == sha(tb)

        def unread(*_: object) -> None:
            raise AssertionError("the tarball was read again")
        monkeypatch.setattr(source, "hash_file", unread)
        assert _verify_dpkg_md5(tb, "linux-source-6.1", cache, r, info) == first
        # A new package version: a new checksum, verified afresh (and refused here).
        (info / "linux-source-6.1.md5sums").write_text(f"{'0' * 32}  {str(tb).lstrip('/')}\n")
        monkeypatch.undo()
        with pytest.raises(SourceError, match="does not match the checksum dpkg recorded"):
            _verify_dpkg_md5(tb, "linux-source-6.1", cache, r, info)
    assert len(list((tmp_path / "cache" / "verified").iterdir())) == 1  # nothing for the refusal


def test_version_mismatch(tmp_path: Path) -> None:
    tb = good_tarball(tmp_path / "linux.tar.gz")
    with pytest.raises(SourceError, match=r"Linux 6.1.99, but .* version is '5.15'"):
        fetch(KernelSettings(path=str(tb), version="5.15"), tmp_path)


@pytest.mark.parametrize(
    "evil",
    [
        ("../x", "outside"),
        ("/etc/evil", "absolute"),
    ],
)
def test_unsafe_paths_refused(tmp_path: Path, evil: tuple[str, str]) -> None:
    name, _ = evil
    tb = make_tarball(tmp_path / "evil.tar.gz", [("linux/Makefile", MAKEFILE), (name, b"x")])
    with pytest.raises(SourceError, match="refusing unsafe archive member"):
        fetch(KernelSettings(path=str(tb)), tmp_path)
    assert not (tmp_path / "x").exists()
    assert not [p for p in (tmp_path / "cache" / "sources").iterdir()]  # no partial entry


def test_escaping_symlink_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("linux/escape")
    link.type = tarfile.SYMTYPE
    link.linkname = "../../../../etc/passwd"
    tb = make_tarball(tmp_path / "evil.tar.gz", [("linux/Makefile", MAKEFILE), link])
    with pytest.raises(SourceError, match="refusing unsafe archive member 'linux/escape'"):
        fetch(KernelSettings(path=str(tb)), tmp_path)


def test_device_file_refused(tmp_path: Path) -> None:
    dev = tarfile.TarInfo("linux/sda")
    dev.type = tarfile.BLKTYPE
    dev.devmajor, dev.devminor = 8, 0
    tb = make_tarball(tmp_path / "evil.tar.gz", [("linux/Makefile", MAKEFILE), dev])
    with pytest.raises(SourceError, match="refusing unsafe archive member 'linux/sda'"):
        fetch(KernelSettings(path=str(tb)), tmp_path)


def test_internal_symlink_allowed(tmp_path: Path) -> None:
    link = tarfile.TarInfo("linux/include/alias.h")
    link.type = tarfile.SYMTYPE
    link.linkname = "../init/main.c"
    tb = make_tarball(tmp_path / "ok.tar.gz", [("linux/Makefile", MAKEFILE),
                                                ("linux/init/main.c", b"int x;\n"), link])
    tree, _ = fetch(KernelSettings(path=str(tb)), tmp_path)
    assert (tree.path / "include/alias.h").read_text() == "int x;\n"


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_right_sha256(tmp_path: Path, http_server: str) -> None:
    tb = good_tarball(tmp_path / "www" / "linux-6.1.99.tar.gz")
    tree, cache = fetch(KernelSettings(url=f"{http_server}/linux-6.1.99.tar.gz", sha256=sha(tb)),
                        tmp_path)
    assert tree.release == "6.1.99"
    assert tree.origin == {"kind": "url", "url": f"{http_server}/linux-6.1.99.tar.gz",
                           "sha256": sha(tb)}
    assert (cache.root / "downloads" / f"{sha(tb)}.tar.gz").is_file()


def test_url_wrong_sha256_leaves_nothing(tmp_path: Path, http_server: str) -> None:
    good_tarball(tmp_path / "www" / "linux-6.1.99.tar.gz")
    with pytest.raises(SourceError, match="sha256 mismatch"):
        fetch(KernelSettings(url=f"{http_server}/linux-6.1.99.tar.gz", sha256="1" * 64), tmp_path)
    downloads = tmp_path / "cache" / "downloads"
    assert not list(downloads.iterdir())
    assert not (tmp_path / "cache" / "sources").exists()


def test_url_not_found(tmp_path: Path, http_server: str) -> None:
    with pytest.raises(SourceError, match="cannot download"):
        fetch(KernelSettings(url=f"{http_server}/missing.tar.gz", sha256="1" * 64), tmp_path)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "linux-git"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "Makefile").write_bytes(MAKEFILE)
    (repo / "README").write_text("first\n")
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one", cwd=repo)
    git("tag", "v6.1.99", cwd=repo)
    (repo / "README").write_text("second\n")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "two", cwd=repo)
    return repo


def test_git_by_tag_and_commit(tmp_path: Path, git_repo: Path) -> None:
    tree, _ = fetch(KernelSettings(git=GitSettings(url=str(git_repo), rev="v6.1.99")), tmp_path)
    assert (tree.path / "README").read_text() == "first\n"
    head = git("rev-parse", "HEAD", cwd=git_repo)
    tree2, _ = fetch(KernelSettings(git=GitSettings(url=f"file://{git_repo}", rev=head)), tmp_path)
    assert (tree2.path / "README").read_text() == "second\n"
    assert tree2.origin["commit"] == head and tree2.key != tree.key


def test_git_unknown_rev(tmp_path: Path, git_repo: Path) -> None:
    with pytest.raises(SourceError, match=r"not found|failed"):
        fetch(KernelSettings(git=GitSettings(url=str(git_repo), rev="v9.9")), tmp_path)


def test_directory_source_is_copied(tmp_path: Path) -> None:
    src = tmp_path / "linux"
    (src / "init").mkdir(parents=True)
    (src / "Makefile").write_bytes(MAKEFILE)
    (src / "init/main.c").write_text("int x;\n")
    tree, _ = fetch(KernelSettings(path=str(src)), tmp_path)
    assert tree.path != src and (tree.path / "init/main.c").is_file()
    (src / "init/main.c").write_text("int y;\n")  # an edit makes a new tree, not a stale hit
    tree2, _ = fetch(KernelSettings(path=str(src)), tmp_path)
    assert tree2.key != tree.key and (tree.path / "init/main.c").read_text() == "int x;\n"


def test_dirty_directory_refused(tmp_path: Path) -> None:
    src = tmp_path / "linux"
    src.mkdir()
    (src / "Makefile").write_bytes(MAKEFILE)
    (src / ".config").write_text("")
    with pytest.raises(SourceError, match="not clean"):
        fetch(KernelSettings(path=str(src)), tmp_path)


def test_debian_missing_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"apt-get install linux-source-9\.9"):
        fetch(KernelSettings(version="9.9"), tmp_path)


# --- app sources: the same fetch, verification and safety rules -------------

APP_MAKEFILE = b"app: app.c\n\t$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)\n"
APP_C = b'#include <stdio.h>\nint main(void) { printf("from a tarball\\n"); return 0; }\n'


def app_tarball(path: Path) -> Path:
    return make_tarball(path, [("app-1.0/Makefile", APP_MAKEFILE), ("app-1.0/app.c", APP_C)])


def fetch_app(spec: AppSourceSettings, tmp_path: Path) -> tuple[AppSource, Cache]:
    cache = Cache(tmp_path / "cache")
    with Reporter(None) as r:
        return fetch_app_source(spec, "[tool.ukl-build.make] source", tmp_path, cache, r), cache


def test_app_source_from_url(tmp_path: Path, http_server: str) -> None:
    tb = app_tarball(tmp_path / "www" / "app-1.0.tar.gz")
    url = f"{http_server}/app-1.0.tar.gz"
    src, _ = fetch_app(AppSourceSettings(url=url, sha256=sha(tb)), tmp_path)
    assert (src.path / "app.c").read_bytes() == APP_C  # the archive's single top dir
    assert src.origin == {"kind": "url", "url": url, "sha256": sha(tb)}


def test_app_source_wrong_sha256_leaves_nothing(tmp_path: Path, http_server: str) -> None:
    app_tarball(tmp_path / "www" / "app-1.0.tar.gz")
    with pytest.raises(SourceError, match=r"\[tool.ukl-build.make\] source url: sha256 mismatch"):
        fetch_app(AppSourceSettings(url=f"{http_server}/app-1.0.tar.gz", sha256="2" * 64), tmp_path)
    assert not list((tmp_path / "cache" / "downloads").iterdir())
    assert not (tmp_path / "cache" / "sources").exists()


def test_app_source_unsafe_archive_refused(tmp_path: Path) -> None:
    tb = make_tarball(tmp_path / "evil.tar.gz", [("app/Makefile", APP_MAKEFILE),
                                                 ("app/../../escape", b"x")])
    with pytest.raises(SourceError, match="refusing unsafe archive member"):
        fetch_app(AppSourceSettings(path=str(tb)), tmp_path)
    assert not (tmp_path / "escape").exists()


def test_app_source_from_git_and_directory(tmp_path: Path, git_repo: Path) -> None:
    src, _ = fetch_app(AppSourceSettings(git=GitSettings(url=str(git_repo), rev="v6.1.99")),
                       tmp_path)
    assert (src.path / "README").read_text() == "first\n" and src.origin["kind"] == "git"
    local = tmp_path / "local"
    local.mkdir()
    (local / "app.c").write_bytes(APP_C)
    src, _ = fetch_app(AppSourceSettings(path="local"), tmp_path)
    assert src.path != local and (src.path / "app.c").read_bytes() == APP_C
    assert src.origin["kind"] == "path" and "tree_sha256" in src.origin


def test_app_source_from_a_debian_source_package(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Needs the deb-src entries scripts/setup.sh derives (CI runs it); musl's is 1 MB.
    src, cache = fetch_app(AppSourceSettings(debian="musl"), tmp_path)
    assert src.origin["kind"] == "debian" and src.origin["package"] == "musl"
    assert src.origin["file"].startswith("musl_") and ".orig.tar." in src.origin["file"]
    assert (src.path / "VERSION").read_text().strip() == src.origin["version"].split("-")[0]
    downloads = sorted(p.name for p in (cache.root / "downloads").iterdir())
    assert downloads[0].startswith(src.origin["sha256"]) and downloads[1].startswith("debian-musl-")
    # apt's answer is remembered for this index state: the next fetch does not run apt
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
    again, _ = fetch_app(AppSourceSettings(debian="musl"), tmp_path)
    assert again == src
    monkeypatch.undo()
    with pytest.raises(SourceError, match=r"debian: apt-get source --print-uris no-such-pkg-x failed"):
        fetch_app(AppSourceSettings(debian="no-such-pkg-x"), tmp_path)
