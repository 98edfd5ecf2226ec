"""`python -m ukl_build doctor`: what a build needs on this machine, and how to get it."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ukl_build.errors import UklError
from ukl_build.host_packages import PACKAGES
from ukl_build.progress import Reporter


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    package: str | None  # Debian package that provides it
    optional: bool = False


def checks() -> list[Check]:
    """One check per command or file of each package in :data:`PACKAGES`."""
    out = []
    for pkg in PACKAGES:
        if pkg.tests_only:
            continue
        for cmd in pkg.commands:
            out.append(Check(f"{cmd} on PATH ({pkg.why})", shutil.which(cmd) is not None,
                             pkg.name, pkg.optional))
        for f in pkg.files:
            out.append(Check(f"{f} ({pkg.why})", Path(f).is_file(), pkg.name, pkg.optional))
    return out


def report(install: bool) -> int:
    results = checks()
    for c in results:
        print(_line(c))
    missing = sorted({c.package for c in results if not c.ok and c.package})
    if not missing:
        print("everything ukl-build uses is installed")
        return 0
    if not install:
        print(f"missing: apt-get install {' '.join(missing)}\n"
              "or run: python -m ukl_build doctor --install   (as root)")
        return 0 if all(c.ok or c.optional for c in results) else 1
    _install(missing)
    return 0


def _line(c: Check) -> str:
    mark = "ok " if c.ok else ("-- " if c.optional else "NO ")
    hint = "" if c.ok else f"   (apt-get install {c.package})"
    return f"  [{mark}] {c.what}{hint}"


def _install(missing: list[str]) -> None:
    """apt-get install the packages, apt's output passed on as it comes."""
    if os.geteuid() != 0:
        raise UklError("doctor --install needs root (it runs apt-get)",
                       hint=f"sudo apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with Reporter(None, stream=sys.stdout) as reporter:  # apt's output, as it comes
        for argv in (["apt-get", "update", "-q"],
                     ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
            print("$ " + " ".join(argv), flush=True)
            reporter.run(argv, step=" ".join(argv[:2]), env=env,
                         on_line=lambda line: print(line, end="", flush=True))
