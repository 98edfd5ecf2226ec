"""The ways a source tree is fetched, each verified and cached by digest: a download
with its sha256, a tarball extracted safely, a directory copied, a git revision
exported, a Debian source package through apt (which checks it against Debian's
signed index).  ``source`` says which tree a build needs; this module gets it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ukl_build.cache import Cache
from ukl_build.errors import SourceError
from ukl_build.files import atomic_write_text, digest, file_sha256, hash_file, new_path
from ukl_build.progress import Reporter
from ukl_build.settings import TreeSource

TARBALL_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar")


def download(url: str, sha256: str, cache: Cache, reporter: Reporter,
              where: str = "[tool.ukl-build.kernel]") -> Path:
    suffix = next((s for s in TARBALL_SUFFIXES if url.split("?")[0].endswith(s)), ".tar")
    dest = cache.root / "downloads" / f"{sha256}{suffix}"
    if dest.is_file():
        return dest
    reporter.stage("source", f"downloading {url}")
    import urllib.request  # here: 30 ms that a build which downloads nothing should not pay

    h = hashlib.sha256()
    try:
        with new_path(dest) as tmp:  # in downloads/ only once verified
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                while chunk := resp.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
            got = h.hexdigest()
            if got != sha256:
                raise SourceError(
                    f"{where} url: sha256 mismatch for {url}\n"
                    f"    expected {sha256}\n    got      {got}",
                    hint="the download was discarded; check the URL and the sha256 key",
                )
    except OSError as e:  # urllib's URLError included
        raise SourceError(f"{where} url: cannot download {url}: {e}") from None
    return dest


def extract_tarball(archive: Path, sha: str, cache: Cache, reporter: Reporter) -> Path:
    """The archive's contents, extracted safely into a cache entry keyed by its sha256."""
    key = digest("tarball", sha)

    def make(tmp: Path) -> None:
        reporter.stage("source", f"extracting {archive.name}")
        with tarfile.open(archive) as tar:
            safe_extract(tar, tmp / "tree", str(archive))

    return cache.entry("sources", key, make, check=False) / "tree"


def tree_from_tarball(archive: Path, sha: str, cache: Cache, reporter: Reporter) -> Path:
    return tree_root(extract_tarball(archive, sha, cache, reporter))


def safe_extract(tar: tarfile.TarFile, dest: Path, what: str) -> None:
    """Extract refusing absolute paths, ``..``, links out of the tree and device files.

    Uses the standard library's reviewed ``data`` filter (PEP 706).
    """
    dest.mkdir(parents=True, exist_ok=True)

    def refuse_absolute(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        # The data filter would strip the leading "/" and extract; we refuse instead.
        if member.name.startswith(("/", os.sep)):
            raise tarfile.AbsolutePathError(member)
        return tarfile.data_filter(member, path)

    try:
        tar.extractall(dest, filter=refuse_absolute)
    except tarfile.FilterError as e:
        member = getattr(e, "tarinfo", None)
        name = member.name if member is not None else "?"
        raise SourceError(f"{what}: refusing unsafe archive member {name!r}: {e}") from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise SourceError(f"{what}: cannot extract: {e}") from None


def tree_root(top: Path) -> Path:
    """The directory holding the top Makefile: the archive root or its single subdirectory."""
    if (top / "Makefile").is_file():
        return top
    entries = [p for p in top.iterdir()]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "Makefile").is_file():
        return entries[0]
    raise SourceError(f"{top}: the archive holds no Linux tree (no top-level Makefile)")


def directory_digest(path: Path, skip: frozenset[str] = frozenset({".git"})) -> str:
    """Content digest of a directory tree (paths, modes, file bytes, link targets),
    leaving out directories named in ``skip`` (wherever they are)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        rel_root = os.path.relpath(root, path)
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(root, d))]):
            full = os.path.join(root, name)
            rel = os.path.normpath(os.path.join(rel_root, name))
            st = os.lstat(full)
            h.update(f"{rel}\0{st.st_mode:o}\0".encode())
            if os.path.islink(full):
                h.update(os.readlink(full).encode())
            elif os.path.isfile(full):
                hash_file(full, h)
            h.update(b"\0")
    return h.hexdigest()


def copy_directory(path: Path, dig: str, cache: Cache, reporter: Reporter) -> Path:
    """A copy of a directory tree, cached by its content digest (``.git`` left out).

    A copy, not the user's tree: later edits there must not change a cached build.
    """
    def make(tmp: Path) -> None:
        reporter.stage("source", f"copying {path}")
        proc = reporter.capture(["cp", "-a", "--reflink=auto", f"{path}/.", tmp / "tree"],
                                step=f"source (copy {path})", check=False)
        if proc.returncode != 0:
            raise SourceError(f"cannot copy {path}: {proc.stderr.strip()}")
        shutil.rmtree(tmp / "tree" / ".git", ignore_errors=True)

    return cache.entry("sources", digest("directory", dig), make, check=False) / "tree"


def _git(args: list[str], reporter: Reporter, cwd: Path | None = None) -> str:
    proc = reporter.capture(["git", *args], step=f"source (git {args[0]})", cwd=cwd,
                            check=False)
    if proc.returncode != 0:
        raise SourceError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.text.strip()


def _resolve(mirror: Path, rev: str, url: str, where: str, reporter: Reporter) -> str:
    for candidate in (f"refs/tags/{rev}", f"refs/remotes/src/{rev}", rev):
        try:
            return _git(["rev-parse", "--verify", "-q", f"{candidate}^{{commit}}"], reporter,
                        cwd=mirror)
        except SourceError:
            continue
    raise SourceError(f"{where} git: revision {rev!r} not found in {url}")


def tree_from_git(
    url: str, rev: str, project_dir: Path, cache: Cache, reporter: Reporter, where: str
) -> tuple[Path, dict[str, Any]]:
    """The files of ``rev`` (tag, branch or full commit id) of a git repository, cached by commit."""
    if shutil.which("git") is None:
        raise SourceError(f"{where} git: git is not installed", hint="apt-get install git")
    if "://" not in url and not url.startswith("git@") and (project_dir / url).exists():
        url = str((project_dir / url).resolve())
    mirror = cache.root / "git" / digest("git", url)[:32]
    with cache.lock("git", mirror.name):
        if not (mirror / "HEAD").exists():
            with new_path(mirror, directory=True) as tmp:
                _git(["init", "-q", "--bare", str(tmp)], reporter)
        reporter.stage("source", f"fetching {rev} from {url}")
        try:
            _git(["fetch", "-q", "--depth=1", url, rev], reporter, cwd=mirror)
            commit = _git(["rev-parse", "--verify", "-q", "FETCH_HEAD^{commit}"], reporter,
                          cwd=mirror)
        except SourceError:
            # Servers that refuse a bare commit id still serve their refs.
            _git(["fetch", "-q", url, "+refs/heads/*:refs/remotes/src/*",
                  "+refs/tags/*:refs/tags/*"], reporter, cwd=mirror)
            commit = _resolve(mirror, rev, url, where, reporter)
    if re.fullmatch(r"[0-9a-f]{40}", rev) and commit != rev:
        raise SourceError(f"{where} git: {url} resolved {rev} to {commit}")
    key = digest("git", commit)

    def make(tmp: Path) -> None:
        reporter.stage("source", f"exporting {commit[:12]}")
        archive = tmp / "export.tar"
        _git(["archive", "--format=tar", "-o", str(archive), commit], reporter, cwd=mirror)
        with tarfile.open(archive, mode="r|") as tar:
            safe_extract(tar, tmp / "tree", f"git {url}@{commit}")
        archive.unlink()

    entry = cache.entry("sources", key, make, check=False)
    return entry / "tree", {"kind": "git", "url": url, "rev": rev, "commit": commit}


def fetch_tree(spec: TreeSource, where: str, project_dir: Path, cache: Cache, reporter: Reporter,
               check_directory: Callable[[Path], None] = lambda path: None,
               ) -> tuple[Path, dict[str, Any]]:
    """The tree a url, path or git source names (``spec``; ``where`` names its table in
    messages), verified and cached, and the record of where it came from (for the
    manifest and the SBOM): an archive's extracted top, a directory's copy (after
    ``check_directory``), or an exported commit.  The same rules for every source."""
    if spec.url is not None:
        assert spec.sha256 is not None  # settings require it
        sha = spec.sha256.lower()
        archive = download(spec.url, sha, cache, reporter, where)
        return extract_tarball(archive, sha, cache, reporter), {"kind": "url", "url": spec.url,
                                                                 "sha256": sha}
    if spec.git is not None:
        return tree_from_git(spec.git.url, spec.git.rev, project_dir, cache, reporter, where)
    assert spec.path is not None
    path = (project_dir / spec.path).resolve()
    if path.is_dir():
        check_directory(path)
        reporter.stage("source", f"hashing directory {path}")
        dig = directory_digest(path)
        return copy_directory(path, dig, cache, reporter), {"kind": "path", "path": str(path),
                                                            "tree_sha256": dig}
    if not path.is_file():
        raise SourceError(f"{where} path: {path} does not exist")
    reporter.stage("source", f"hashing {path}")
    sha = file_sha256(path)
    if spec.sha256 and sha != spec.sha256.lower():
        raise SourceError(f"{where} path: sha256 mismatch for {path}\n"
                          f"    expected {spec.sha256.lower()}\n    got      {sha}",
                          hint=f"{where} sha256 names the file you meant to build")
    return extract_tarball(path, sha, cache, reporter), {"kind": "path", "path": str(path),
                                                         "sha256": sha}


def single_root(top: Path) -> Path:
    """An archive's top directory, or the one directory it holds (project-1.0/)."""
    entries = list(top.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return top


_APT_URI = re.compile(r"^'(?P<uri>[^']+)' (?P<name>\S+) (?P<size>\d+) SHA256:(?P<sha>[0-9a-f]{64})$")


def debian_source(package: str, where: str, cache: Cache,
                  reporter: Reporter) -> tuple[Path, dict[str, Any]]:
    """The upstream tarball of a Debian source package (Debian's patches not applied).

    apt names the file and its sha256 from the signed index (``--print-uris``)
    and checks the download against it; we check the file again before use.
    What apt answered is remembered under a digest of apt's index state, so
    a rebuild asks apt again only after ``apt-get update`` changed something.
    """
    state = _apt_index_state()
    answer = cache.root / "downloads" / f"debian-{package}-{digest(package, state)[:24]}.json"
    try:
        known = json.loads(answer.read_text())
        dest = cache.root / "downloads" / known["file"]
        if dest.is_file():
            tree = single_root(extract_tarball(dest, known["sha256"], cache, reporter))
            return tree, known["origin"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    name, sha, version = _apt_upstream_tarball(package, where, reporter)
    dest = cache.root / "downloads" / f"{sha}{name[name.index('.tar'):]}"
    if not dest.is_file():
        reporter.stage("app", f"downloading Debian source package {package} {version}")
        _apt_download(package, where, name, sha, dest, reporter)
    tree = single_root(extract_tarball(dest, sha, cache, reporter))
    origin = {"kind": "debian", "package": package, "version": version, "file": name, "sha256": sha}
    atomic_write_text(answer, json.dumps({"file": dest.name, "sha256": sha, "origin": origin}))
    return tree, origin


def _apt_upstream_tarball(package: str, where: str, reporter: Reporter) -> tuple[str, str, str]:
    """(file name, sha256, version) of the package's upstream tarball, as apt's signed
    index lists them."""
    listing = reporter.capture(["apt-get", "source", "--print-uris", package],
                               step=f"{where} debian (apt-get source --print-uris)", check=False)
    if listing.returncode != 0:
        tail = (listing.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SourceError(f"{where} debian: apt-get source --print-uris {package} failed: {tail}",
                          hint="apt needs deb-src entries (scripts/setup.sh derives them from the "
                               "machine's Debian entries) and a current 'apt-get update'")
    files = {m["name"]: m["sha"] for ln in listing.text.splitlines() if (m := _APT_URI.match(ln))}
    dsc = next((n for n in files if n.endswith(".dsc")), None)
    upstream = _upstream_tarballs(files)
    if dsc is None or len(upstream) != 1:
        raise SourceError(f"{where} debian: cannot tell the upstream tarball of {package} from "
                          f"apt's file list: {sorted(files)}")
    return upstream[0], files[upstream[0]], dsc.removesuffix(".dsc").split("_", 1)[1]


def _upstream_tarballs(files: dict[str, str]) -> list[str]:
    """The upstream tarballs among a source package's files: the .orig tarball, or for a
    native package its one tarball that is not Debian's packaging."""
    orig = [n for n in files if re.search(r"\.orig\.tar\.(gz|xz|bz2)$", n)]
    return orig or [n for n in files
                    if re.search(r"\.tar\.(gz|xz|bz2)$", n) and ".debian." not in n]


def _apt_download(package: str, where: str, name: str, sha: str, dest: Path,
                  reporter: Reporter) -> None:
    """apt-get source --download-only, and the tarball ``name`` moved to ``dest`` once its
    sha256 is the one apt listed."""
    dest.parent.mkdir(parents=True, exist_ok=True)  # the apt temp dir goes beside it
    with tempfile.TemporaryDirectory(prefix=".tmp-apt-", dir=dest.parent) as tmp, \
            new_path(dest) as verified:
        # Not pinned with =version: the file names drop the epoch (redis is 5:7.0.15-...);
        # apt picks the same candidate it listed, and the digest check below holds it to that.
        got = reporter.capture(["apt-get", "source", "--download-only", package],
                               step=f"{where} debian (apt-get source)", cwd=Path(tmp),
                               check=False)
        if got.returncode != 0:
            tail = (got.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise SourceError(f"{where} debian: apt-get source {package}: {tail}")
        if not (Path(tmp) / name).is_file():
            raise SourceError(f"{where} debian: apt-get source {package} did not fetch {name}")
        if file_sha256(Path(tmp) / name) != sha:
            raise SourceError(f"{where} debian: {name} does not match apt's sha256 {sha}")
        os.replace(Path(tmp) / name, verified)


def _apt_index_state() -> list[tuple[str, str]]:
    """What decides apt's answer, by content: the signed Release files (which hold the
    digests of every index), the names of the source indexes present, apt's pinning."""
    state = []
    for path in sorted(Path("/var/lib/apt/lists").glob("*")):
        if path.name.endswith(("Release", "InRelease")):
            state.append((path.name, file_sha256(path)))
        elif "_source_Sources" in path.name:
            state.append((path.name, ""))
    for path in sorted(Path("/etc/apt/preferences.d").glob("*")):
        if path.is_file():
            state.append((str(path), file_sha256(path)))
    return state
