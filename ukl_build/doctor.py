"""`python -m ukl_build doctor`: what a build needs on this machine, and how to get it."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ukl_build.errors import UklError
from ukl_build.source import debian_tarball


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    package: str | None  # Debian package that provides it
    optional: bool = False


DEBIAN_PACKAGES = ("gcc", "make", "flex", "bison", "bc", "cpio", "perl", "patch", "xz-utils",
                   "zstd", "libelf-dev", "libssl-dev", "git", "ccache", "qemu-system-x86",
                   "linux-source-6.1")


def checks(kernel_version: str = "6.1") -> list[Check]:
    def tool(name: str, pkg: str, optional: bool = False) -> Check:
        return Check(f"{name} on PATH", shutil.which(name) is not None, pkg, optional)

    return [
        tool("gcc", "gcc"), tool("make", "make"), tool("flex", "flex"), tool("bison", "bison"),
        tool("bc", "bc"), tool("cpio", "cpio"), tool("perl", "perl"), tool("patch", "patch"),
        tool("xz", "xz-utils"), tool("zstd", "zstd"), tool("readelf", "binutils"),
        Check("libelf headers (objtool)", Path("/usr/include/gelf.h").is_file(), "libelf-dev"),
        Check("openssl headers", Path("/usr/include/openssl/ssl.h").is_file(), "libssl-dev"),
        tool("git", "git", optional=True),
        tool("ccache", "ccache", optional=True),
        tool("qemu-system-x86_64", "qemu-system-x86"),
        Check(f"Debian kernel source {debian_tarball(kernel_version)}",
              debian_tarball(kernel_version).is_file(), f"linux-source-{kernel_version}",
              optional=True),
    ]


def report(install: bool) -> int:
    results = checks()
    for c in results:
        mark = "ok " if c.ok else ("-- " if c.optional else "NO ")
        hint = "" if c.ok else f"   (apt-get install {c.package})"
        print(f"  [{mark}] {c.what}{hint}")
    missing = sorted({c.package for c in results if not c.ok and c.package})
    if not missing:
        print("everything ukl-build uses is installed")
        return 0
    if not install:
        print(f"missing: apt-get install {' '.join(missing)}\n"
              "or run: python -m ukl_build doctor --install   (as root)")
        return 0 if all(c.ok or c.optional for c in results) else 1
    if os.geteuid() != 0:
        raise UklError("doctor --install needs root (it runs apt-get)",
                       hint=f"sudo apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
        print("$ " + " ".join(argv), flush=True)
        if subprocess.run(argv, env=env).returncode != 0:
            raise UklError(f"{' '.join(argv[:2])} failed")
    return 0
