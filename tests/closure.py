"""The install closure: a bin directory holding only the commands of the declared packages.

A green run on a machine that happens to have a tool proves nothing (rsync was
such a tool).  Builds given ``PATH=declared_commands_dir(...)`` see only the
commands of the packages in ukl_build/host_packages.py plus Debian's
``Priority: required`` set, so a missing declaration fails on any machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ukl_build.host_packages import PACKAGES

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
