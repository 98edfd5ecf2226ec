"""The Debian packages ukl-build runs commands from: the one list.

``scripts/setup.sh`` installs them (it runs this file as a script, before any
virtualenv exists, so: standard library only), ``python -m ukl_build doctor``
checks them, and ``tests/test_install.py`` builds and boots with ``PATH``
holding only the commands of these packages plus Debian's ``Priority:
required`` set, so a command missing from this list fails CI on any machine.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class HostPackage:
    name: str
    commands: tuple[str, ...] = ()  # what ukl-build (or the kernel build) runs from it
    files: tuple[str, ...] = ()  # what it provides that is not a command
    why: str = ""
    optional: bool = False  # only some builds need it
    tests_only: bool = False  # the test suite's own tools


PACKAGES: tuple[HostPackage, ...] = (
    HostPackage("gcc", ("gcc",), why="the app and the kernel"),
    HostPackage("make", ("make",), why="kernel builds, make-driven apps"),
    HostPackage("flex", ("flex",), why="kconfig and dtc lexers"),
    HostPackage("bison", ("bison",), why="kconfig parser"),
    HostPackage("bc", ("bc",), why="kernel timeconst.h"),
    HostPackage("perl", ("perl",), why="kernel headers and build scripts"),
    HostPackage("patch", ("patch",), why="applies the UKL kernel and musl series"),
    HostPackage("xz-utils", ("xz",), why="xz-compressed kernels and sources"),
    HostPackage("zstd", ("zstd",), why="compresses the kernel; checks the bzImage payload"),
    HostPackage("binutils", ("ld", "as", "objcopy", "nm", "ar", "readelf", "objdump"),
                why="linking the app into vmlinux, checking ELF files (objdump: tests)"),
    HostPackage("libelf-dev", files=("/usr/include/gelf.h",), why="objtool"),
    HostPackage("libssl-dev", files=("/usr/include/openssl/ssl.h",), why="kernel host tools"),
    HostPackage("qemu-system-x86", ("qemu-system-x86_64",), why="run, the launcher, tests"),
    HostPackage("linux-source-6.1", files=("/usr/src/linux-source-6.1.tar.xz",),
                why="the offline default kernel source", optional=True),
    HostPackage("linux-source-6.12", files=("/usr/src/linux-source-6.12.tar.xz",),
                why="the kernel source of kernel.version = \"6.12\"", optional=True),
    HostPackage("ccache", ("ccache",), why="compiler cache for kernel builds", optional=True),
    HostPackage("git", ("git",), why="kernel sources from git", optional=True),
    HostPackage("distcc", ("distcc", "distccd"), why="distcc.hosts: kernel compiles on a build farm",
                optional=True),
    HostPackage("fdisk", ("sfdisk",), why="the disk format's GPT partition table", optional=True),
    HostPackage("mtools", ("mformat", "mmd", "mcopy"),
                why="the disk format's FAT file system, without root or loop devices",
                optional=True),
    HostPackage("sbsigntool", ("sbsign", "sbverify"), why="Secure Boot signing (sign)",
                optional=True),
    HostPackage("faketime", ("faketime",),
                why="signs at SOURCE_DATE_EPOCH: a signature records its signing time",
                optional=True),
    HostPackage("e2fsprogs", ("mkfs.ext4",),
                why="run and the launcher format a volume's new file (ext4)", optional=True),
    HostPackage("ovmf", files=("/usr/share/OVMF/OVMF_CODE_4M.fd",
                               "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
                why="UEFI firmware: run boots the efi and disk formats on q35", optional=True),
    HostPackage("python3-venv", why="scripts/setup.sh makes .venv", tests_only=True),
    HostPackage("procps", ("pgrep", "pkill"), why="tests look for left-over VMs", tests_only=True),
    HostPackage("redis-server", ("redis-server",), why="tests: a ccache remote store",
                tests_only=True),
    HostPackage("openssl", ("openssl",), why="tests make a Secure Boot key pair", tests_only=True),
    HostPackage("redis-tools", ("redis-cli", "redis-benchmark"), why="tests talk to Redis",
                tests_only=True),
    HostPackage("wrk", ("wrk",), why="tests load nginx for 10 s", tests_only=True),
    HostPackage("nftables", ("nft",),
                why="tests read back the firewall's rules as its nf_tables loader sends them",
                tests_only=True),
    HostPackage("qemu-user", ("qemu-x86_64",),
                why="tests: the cost counter's plugin on a program of known instructions",
                tests_only=True),
)


def main(argv: list[str]) -> int:
    """``--names``: the package names, one a line (for scripts/setup.sh)."""
    if argv != ["--names"]:
        print("usage: host_packages.py --names", file=sys.stderr)
        return 2
    for p in PACKAGES:
        print(p.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
