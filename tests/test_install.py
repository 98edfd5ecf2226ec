"""The install closure: every command a build and a boot run comes from a declared package.

A green run on a machine that happens to have a tool proves nothing (rsync
was such a tool).  This test gives the build a PATH holding only the
commands of the packages in ukl_build/host_packages.py plus Debian's
``Priority: required`` set, and an empty cache, so a missing declaration
fails here on any machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ukl_build.cache import Cache
from ukl_build.host_packages import PACKAGES

from conftest import Builds, copy_example

BIN_DIRS = ("/usr/bin/", "/bin/", "/usr/sbin/", "/sbin/")


def required_packages() -> list[str]:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Priority}\t${db:Status-Status}\n"],
                         capture_output=True, text=True, check=True).stdout
    return [name for name, prio, status in (ln.split("\t") for ln in out.splitlines())
            if prio == "required" and status == "installed"]


def declared_commands_dir(dest: Path) -> Path:
    """A bin directory of links to every command the allowed packages install."""
    dest.mkdir()
    names = [p.name for p in PACKAGES] + required_packages()
    files = subprocess.run(["dpkg", "-L", *names], capture_output=True, text=True).stdout
    commands = [p for p in files.splitlines()
                if p.startswith(BIN_DIRS) and os.path.lexists(p) and not os.path.isdir(p)]
    # Generic names such as awk and cc are update-alternatives links that the
    # packages register when installed, so dpkg -L does not list them.
    owned = {os.path.realpath(p) for p in commands}
    for d in BIN_DIRS:
        for entry in Path(d).iterdir() if os.path.isdir(d) else ():
            if entry.is_symlink() and os.readlink(entry).startswith("/etc/alternatives/") \
                    and os.path.realpath(entry) in owned:
                commands.append(str(entry))
    for path in commands:
        link = dest / os.path.basename(path)
        if not link.exists():
            link.symlink_to(path)
    return dest


def test_declared_packages_give_every_command_doctor_checks(tmp_path: Path) -> None:
    bindir = declared_commands_dir(tmp_path / "bin")
    for pkg in PACKAGES:
        for cmd in pkg.commands:
            assert (bindir / cmd).exists(), f"{cmd} is not installed by Debian package {pkg.name}"


@pytest.mark.kernel
def test_build_and_boot_with_only_declared_commands(builds: Builds, cache: Cache,
                                                    tmp_path: Path) -> None:
    session = builds("hello", "ukl")  # warms the shared compiler cache for this configuration
    bindir = declared_commands_dir(tmp_path / "bin")
    fresh = tmp_path / "cache"
    fresh.mkdir()
    # An empty cache (source extraction, patching, kconfig, sysroot, kernel build all
    # run), sharing only the compiler cache so the kernel compiles are cache hits.
    (fresh / "ccache").symlink_to(cache.root / "ccache")
    project = copy_example("hello", tmp_path)
    env = {"PATH": str(bindir), "HOME": str(tmp_path), "UKL_BUILD_CACHE": str(fresh),
           "LANG": "C.UTF-8"}
    build = subprocess.run([sys.executable, "-m", "ukl_build", "build", str(project)],
                           capture_output=True, text=True, env=env, timeout=1500)
    assert build.returncode == 0, build.stderr[-3000:]
    assert "cold build" in build.stderr
    # Reproducible: the same inputs built in another cache and build directory, at
    # another time, give the session's image byte for byte.
    ours = session.images.image("bzimage")
    image = project / "build/ukl-build/image" / ours.name
    assert image.read_bytes() == ours.read_bytes()
    run = subprocess.run([sys.executable, "-m", "ukl_build", "run", str(project), "--timeout", "120"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert "Hello, world, from a unikernel! (CPL 0)" in run.stdout, run.stderr[-3000:]
    assert run.returncode == 3
