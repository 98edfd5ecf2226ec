"""The launcher: boot an image under QEMU, stream its serial console, return the app's
exit status.

Standard library only, and no imports from outside this package (relative
imports only): the package is copied into every app wheel as its launcher
(``python -m <app>``), and ukl-build's own ``run`` uses it in place.  Python
3.9 or newer (tests/test_project.py checks its syntax and imports).

- ``options``: RunOptions, what a boot is asked for;
- ``manifest``: manifest.json, what an image directory holds;
- ``cmdline``: the kernel command line, with a model of the kernel's parser;
- ``qemu``, ``firmware``, ``accel``: QEMU's command line, OVMF, KVM or TCG;
- ``qmp``, ``process``, ``console``, ``run``: starting, supervising and
  reading a VM;
- ``cli``: the command line of ``python -m <app>``.

The image directory holds ``manifest.json`` (written by ukl_build.artifacts)
and the image files it names.  How the app's exit status reaches the host,
read from the serial console:

- user mode: /init exiting makes the kernel panic with "Attempted to kill
  init! exitcode=0x...", which carries the wait status; the kernel
  (``CONFIG_PANIC_TIMEOUT=-1``) then reboots, and ``-no-reboot`` ends QEMU.
  This needs no kernel patch and works for any static /init.
- UKL mode: the kernel prints "ukl: exit status N" and restarts.

On microvm, ``reboot=t`` (triple fault) is the reboot method that ends QEMU.

The efi and disk formats boot through UEFI firmware (Debian's OVMF on q35):
their kernel carries its whole command line (``cmdline_builtin`` in the
manifest), so nothing is appended at boot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def launcher_main(image_dir: Path, argv: Sequence[str] | None = None) -> int:
    """Entry point of an installed app wheel: ``python -m <app> [options]``."""
    from .cli import launcher_main as main

    return main(image_dir, argv)
