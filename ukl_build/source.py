"""Stage 1: fetch a kernel source tree, verify it, extract it safely, cache it by digest.

Kinds: Debian's ``linux-source-<version>`` package (offline default), a URL with a
mandatory sha256, a local tarball (sha256 optional) or directory, a git URL + rev.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ukl_build.cache import Cache
from ukl_build.errors import SourceError
from ukl_build.fetch import (
    debian_source,
    fetch_tree,
    single_root,
    tree_from_tarball,
    tree_root,
)
from ukl_build.files import digest, hash_file
from ukl_build.progress import Reporter
from ukl_build.settings import AppSourceSettings, KernelSettings

DPKG_INFO = Path("/var/lib/dpkg/info")  # <package>.md5sums: what dpkg installed


@dataclass(frozen=True)
class SourceTree:
    """A pristine, verified kernel tree in the cache."""

    path: Path
    key: str
    release: str  # e.g. "6.1.192"
    origin: dict[str, Any]


def debian_tarball(version: str) -> Path:
    return Path(f"/usr/src/linux-source-{version}.tar.xz")


def fetch_source(
    kernel: KernelSettings, project_dir: Path, cache: Cache, reporter: Reporter
) -> SourceTree:
    """The kernel tree ``[tool.ukl-build.kernel]`` names, verified, extracted and cached;
    its release must be of the series ``version`` names."""
    if kernel.kind == "debian":
        tree, origin = _debian_kernel(kernel, cache, reporter)
    else:
        top, origin = fetch_tree(kernel, "[tool.ukl-build.kernel]", project_dir, cache, reporter,
                                 check_directory=_check_kernel_directory)
        tree = tree_root(top)
    release = kernel_release(tree)
    if not release.startswith(kernel.version + ".") and release != kernel.version:
        raise SourceError(
            f"kernel source is Linux {release}, but [tool.ukl-build.kernel] version is "
            f"{kernel.version!r}",
            hint="set kernel.version to the tree's series, or pick a matching tree",
        )
    key = tree.relative_to(cache.root / "sources").parts[0]
    return SourceTree(path=tree, key=key, release=release, origin=origin)


def _debian_kernel(kernel: KernelSettings, cache: Cache,
                   reporter: Reporter) -> tuple[Path, dict[str, Any]]:
    """Debian's linux-source-<version>, installed by dpkg and checked against its list."""
    tarball = debian_tarball(kernel.version)
    if not tarball.is_file():
        raise SourceError(
            f"kernel source: {tarball} not found (Debian package linux-source-{kernel.version})",
            hint=f"apt-get install linux-source-{kernel.version}   "
            "(or: python -m ukl_build doctor --install, as root)",
        )
    sha = _verify_dpkg_md5(tarball, f"linux-source-{kernel.version}", cache, reporter)
    origin = {"kind": "debian", "package": f"linux-source-{kernel.version}",
              "path": str(tarball), "sha256": sha}
    return tree_from_tarball(tarball, sha, cache, reporter), origin


def _check_kernel_directory(path: Path) -> None:
    """A kernel tree given as a directory: a Linux tree, and clean (we build out of tree)."""
    kernel_release(path)
    for dirty in (".config", "include/config"):
        if (path / dirty).exists():
            raise SourceError(
                f"[tool.ukl-build.kernel] path: {path} has {dirty}: the tree is not clean",
                hint=f"run 'make -C {path} mrproper' (ukl-build builds out of tree)",
            )


def kernel_release(tree: Path) -> str:
    """VERSION.PATCHLEVEL.SUBLEVEL from the tree's top Makefile."""
    try:
        text = (tree / "Makefile").read_text(errors="replace")
    except FileNotFoundError:
        raise SourceError(f"{tree}: no top-level Makefile; not a Linux source tree") from None
    fields = {}
    for name in ("VERSION", "PATCHLEVEL", "SUBLEVEL"):
        m = re.search(rf"^{name}\s*=\s*(\d+)\s*$", text, re.M)
        if not m:
            raise SourceError(f"{tree}/Makefile: no {name}; not a Linux source tree")
        fields[name] = m.group(1)
    return f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields['SUBLEVEL']}"


# --- verification -----------------------------------------------------------

def _verify_dpkg_md5(path: Path, package: str, cache: Cache, reporter: Reporter,
                     info_dir: Path = DPKG_INFO) -> str:
    """Check ``path`` against dpkg's md5sums list; return its sha256 (one read for both).

    The result is cached by what dpkg recorded (package, file, md5), not by the
    file's times: once a file with that checksum was verified, its sha256 names
    the tree extracted from it, and a later build uses that tree without
    reading the archive again (a tarball changed since then is not used).  A
    new package version has a new checksum and is verified afresh.
    """
    md5sums = info_dir / f"{package}.md5sums"
    if not md5sums.is_file():
        raise SourceError(
            f"{path}: no dpkg checksum list {md5sums}; cannot verify it",
            hint=f"reinstall it: apt-get install --reinstall {package}",
        )
    rel = str(path).lstrip("/")
    expected = None
    for line in md5sums.read_text().splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1] == rel:
            expected = parts[0]
    if expected is None:
        raise SourceError(f"{md5sums}: no entry for {path}")

    def verify(tmp: Path) -> None:
        reporter.stage("source", f"verifying {path} against dpkg's checksums")
        md5, sha = hashlib.md5(), hashlib.sha256()
        hash_file(path, md5, sha)
        if md5.hexdigest() != expected:
            raise SourceError(
                f"{path}: does not match the checksum dpkg recorded for {package}",
                hint=f"apt-get install --reinstall {package}",
            )
        (tmp / "sha256").write_text(sha.hexdigest() + "\n")

    entry = cache.entry("verified", digest("dpkg-md5", package, rel, expected), verify)
    return (entry / "sha256").read_text().strip()



# --- app sources ------------------------------------------------------------

@dataclass(frozen=True)
class AppSource:
    """An app's source tree fetched and verified like the kernel's (never to be written to).

    Its cache entry is checked against its record by whoever reads it (:meth:`check`,
    :meth:`check_file`), not when it is fetched: a build that reuses what was made from
    it reads none of it."""

    path: Path
    origin: dict[str, Any]

    def _key(self, cache: Cache) -> str | None:
        sources = cache.root / "sources"
        return self.path.relative_to(sources).parts[0] if self.path.is_relative_to(sources) \
            else None

    def check(self, cache: Cache) -> None:
        """Before the tree is read: every file's size, mode and mtime against the record."""
        if (key := self._key(cache)) is not None:
            cache.check_entry("sources", key)

    def check_file(self, cache: Cache, name: str) -> None:
        """Before one file of the tree is read on its own: that file hashed."""
        if (key := self._key(cache)) is not None:
            rel = (self.path / name).relative_to(cache.location("sources", key)).as_posix()
            cache.check_file("sources", key, rel)


def fetch_app_source(spec: AppSourceSettings, where: str, project_dir: Path, cache: Cache,
                     reporter: Reporter) -> AppSource:
    """``[tool.ukl-build.make] source`` (or cmake): a URL + sha256, a local tarball or
    directory, a git revision or a Debian source package, with the kernel source's
    safety rules; checked against its record by what reads it (:class:`AppSource`)."""
    if spec.debian is not None:
        return AppSource(*debian_source(spec.debian, where, cache, reporter))
    top, origin = fetch_tree(spec, where, project_dir, cache, reporter)
    # An archive (its origin has its sha256) holds the tree in its one top directory
    # (project-1.0/), if it has one.
    return AppSource(single_root(top) if "sha256" in origin else top, origin)
