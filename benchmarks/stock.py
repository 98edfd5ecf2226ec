"""Debian's cloud kernel, the stock alternative a user would pick, booted with our apps.

The kernel comes from the installed package (``/boot``, ``/lib/modules``) or,
if none is installed, from ``apt-get download linux-image-cloud-amd64``'s
kernel package (apt checks it against Debian's signed index) unpacked into the
benchmark's work directory.  Its virtio drivers are modules and it has no
``ip=`` autoconfiguration, so a server on it gets an initramfs whose /init
(``benchmarks/apps/netinit``) loads the modules, configures eth0 and then runs
the app.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile

from ukl_build.imagefiles import ShippedFile, cpio_line
from ukl_build.kbuild import ETC_FILES
from ukl_build.resources import runtime_dir

# The drivers a server needs on QEMU: virtio-mmio (microvm) or virtio-pci, and virtio-net.
NET_MODULES = ("virtio_mmio", "virtio_pci", "virtio_net")
PACKAGE = "linux-image-cloud-amd64"


@dataclass(frozen=True)
class StockKernel:
    vmlinuz: Path
    modules: Path  # lib/modules/<release>
    origin: str  # where it came from, for the report

    @property
    def system_map(self) -> Path:
        """The kernel's symbols (the package ships System.map beside vmlinuz, no vmlinux)."""
        release = self.vmlinuz.name.removeprefix("vmlinuz-")
        return self.vmlinuz.with_name(f"System.map-{release}")


def debian_cloud_kernel(work: Path) -> StockKernel | None:
    """The installed cloud kernel, else the package's, unpacked under ``work``; None if
    apt cannot give it (no network, not Debian)."""
    installed = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
    if installed:
        release = installed[-1].name.removeprefix("vmlinuz-")
        return StockKernel(installed[-1], Path("/lib/modules") / release, f"installed {release}")
    dest = work / "debian-cloud"
    found = sorted((dest / "root" / "boot").glob("vmlinuz-*")) if dest.is_dir() else []
    if not found:
        package = _kernel_package()
        if package is None:
            return None
        tmp = work / "debian-cloud.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # ours: a download that did not finish
        tmp.mkdir(parents=True)
        subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, check=True,
                       capture_output=True)
        (deb,) = tmp.glob("*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], check=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        found = sorted((dest / "root" / "boot").glob("vmlinuz-*"))
    release = found[-1].name.removeprefix("vmlinuz-")
    debs = sorted(dest.glob("*.deb"))
    return StockKernel(found[-1], dest / "root" / "lib" / "modules" / release,
                       debs[-1].name if debs else release)


def _kernel_package() -> str | None:
    """The versioned kernel package the metapackage depends on (e.g. linux-image-6.1.0-56-cloud-amd64)."""
    proc = subprocess.run(["apt-cache", "depends", PACKAGE], capture_output=True, text=True,
                          check=False)
    for line in proc.stdout.splitlines():
        kind, _, name = line.strip().partition(": ")
        if kind == "Depends" and name.startswith("linux-image-"):
            return name
    return None


def _modinfo(path: Path) -> dict[str, str]:
    with open(path, "rb") as f:
        section = ELFFile(f).get_section_by_name(".modinfo")
        data = section.data() if section is not None else b""
    fields = (item.decode(errors="replace").partition("=") for item in data.split(b"\0") if item)
    return {k: v for k, _, v in fields}


def module_load_order(modules: Path, roots: tuple[str, ...] = NET_MODULES) -> list[Path]:
    """The .ko files of ``roots`` and what they depend on (modinfo "depends="), dependencies
    first: the order in which to load them without modprobe."""
    by_name = {p.name.removesuffix(".ko").replace("-", "_"): p
               for p in (modules / "kernel").rglob("*.ko")}
    if not by_name:
        raise RuntimeError(f"{modules}: no uncompressed .ko modules")
    order: list[Path] = []

    def visit(name: str) -> None:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise RuntimeError(f"{modules}: module {name} not found")
        if path in order:
            return
        for dep in filter(None, _modinfo(path).get("depends", "").split(",")):
            visit(dep)
        order.append(path)

    for root in roots:
        visit(root)
    return order


def server_initramfs(kernel: StockKernel, netinit: Path, app: Path, gen_init_cpio: Path,
                     dest: Path, files: Sequence[ShippedFile] = ()) -> Path:
    """A cpio: /init = netinit, /app = the static server, /etc's user and group files as
    our images have them (memcached's ``-u root`` looks the user up), /modules/NN-name.ko
    in load order, and the project's ``files`` and volume directories as our images have
    them (a volume's directory stays in the initramfs: Debian's kernel has no volume=)."""
    lines = ["dir /dev 0755 0 0", "nod /dev/console 0600 0 0 c 5 1",
             "nod /dev/null 0666 0 0 c 1 3", "nod /dev/zero 0666 0 0 c 1 5",
             "dir /proc 0755 0 0", "dir /tmp 01777 0 0",
             "dir /etc 0755 0 0", "dir /modules 0755 0 0",
             *(f"file /etc/{name} {runtime_dir() / 'etc' / name} 0644 0 0" for name in ETC_FILES),
             f"file /init {netinit} 0755 0 0", f"file /app {app} 0755 0 0"]
    for i, ko in enumerate(module_load_order(kernel.modules)):
        lines.append(f"file /modules/{i:02d}-{ko.name} {ko} 0644 0 0")
    lines += [cpio_line(f, None if f.source is None else str(f.source)) for f in files]
    listing = dest.with_suffix(".list")
    listing.write_text("\n".join(lines) + "\n")
    with open(dest, "wb") as out:
        subprocess.run([str(gen_init_cpio), str(listing)], stdout=out, check=True)
    return dest


def stock_image_dir(user_image: Path, kernel: StockKernel, dest: Path) -> Path:
    """An image directory for the runner: the user-mode image's manifest, with the stock
    kernel as its bzImage (the initramfs comes with -initrd)."""
    manifest: dict[str, Any] = json.loads((user_image / "manifest.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "vmlinuz"
    shutil.copyfile(kernel.vmlinuz, target)
    manifest["images"] = {"bzimage": {"file": target.name, "size": target.stat().st_size}}
    # Debian's kernel has none of our patches: no listen notices (kernel patch 0020), so
    # the forwards must open when QEMU starts.
    manifest.pop("listen_notify", None)
    # Nor volume=: the app's volume directories are in its initramfs (server_initramfs),
    # in RAM, and no disk is attached.
    manifest.pop("volumes", None)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest
