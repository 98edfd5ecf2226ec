"""The install closure: every command a build and a boot run comes from a declared package.

The end-to-end half (a build in an empty cache and a boot, with ``PATH``
limited to ``closure.declared_commands_dir``) is the build farm's fresh
runner in test_farm.py: an empty cache fed by a compiler cache, as this
test's own build was before, so one kernel build proves both.
"""

from __future__ import annotations

from pathlib import Path

from ukl_build.host_packages import PACKAGES

from closure import declared_commands_dir


def test_declared_packages_give_every_command_doctor_checks(tmp_path: Path) -> None:
    bindir = declared_commands_dir(tmp_path / "bin")
    for pkg in PACKAGES:
        for cmd in pkg.commands:
            assert (bindir / cmd).exists(), f"{cmd} is not installed by Debian package {pkg.name}"
