"""[tool.ukl-build.volumes]: checked settings, the storage recipe, mount points in the
initramfs, the manifest's record, and the launcher's side (kernel parameters, QEMU's
disks, files created and formatted on first use).  The boots are in test_redis.py."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from ukl_build.errors import ConfigError
from ukl_build.imagefiles import image_files, initramfs_entries
from ukl_build.kconfig import recipes_for
from ukl_build.launcher import volumes as launcher_volumes
from ukl_build.launcher.cmdline import ImageLine, builtin_cmdline, kernel_cmdline
from ukl_build.launcher.options import RunError, RunOptions
from ukl_build.launcher.qemu import qemu_argv
from ukl_build.launcher.volumes import Attached, VolumeRecord, attach, drive_args, prepare
from ukl_build.settings import load_settings, volume_table

BASE = '[project]\nname = "x"\nversion = "1"\n[tool.ukl-build]\nsources = ["a.c"]\n'
DATA = '[tool.ukl-build.volumes.data]\nmount = "/data"\n'
OPTS = "data=ordered,barrier=1,errors=remount-ro"


def settings(project: Path, extra: str, **over: str):  # type: ignore[no-untyped-def]
    (project / "pyproject.toml").write_text(BASE + extra)
    return load_settings(project, over or None)


def record(mount: str = "/data", read_only: bool = False, size: int = 64 << 20) -> VolumeRecord:
    return {"mount": mount, "size": size, "filesystem": "ext4", "read_only": read_only}


def test_a_volume_is_a_directory_of_the_image_and_adds_the_storage_recipe(
        tmp_path: Path) -> None:
    s = settings(tmp_path, DATA + '[tool.ukl-build.volumes.logs]\nmount = "/var/log/app"\n'
                                  'size = "16M"\nread-only = true\n')
    assert volume_table(s) == [("data", record()),
                               ("logs", record("/var/log/app", True, 16 << 20))]
    assert recipes_for(s)[-1] == "storage"
    _, lines = initramfs_entries(image_files(s))
    assert lines == ["dir /data 0755 0 0", "dir /var 0755 0 0", "dir /var/log 0755 0 0",
                     "dir /var/log/app 0755 0 0"]
    named = settings(tmp_path, 'recipes = ["storage", "microvm"]\n' + DATA)
    assert recipes_for(named).count("storage") == 1


@pytest.mark.parametrize(("extra", "over", "message"), [
    ('[tool.ukl-build.volumes.Data]\nmount = "/data"\n', {},
     "[tool.ukl-build.volumes] Data: 'Data' is not a usable volume name"),
    ('[tool.ukl-build.volumes.data]\nmount = "data"\n', {},
     "[tool.ukl-build.volumes.data] mount: 'data': expected an absolute directory"),
    ('[tool.ukl-build.volumes.data]\nmount = "/da:ta"\n', {}, "without white space, ':' or ','"),
    ('[tool.ukl-build.volumes.data]\nmount = "/data/"\n', {}, "is not a plain absolute"),
    ('[tool.ukl-build.volumes.data]\nmount = "/"\n', {}, "is not a plain absolute"),
    ('[tool.ukl-build.volumes.data]\nmount = "/proc/x"\n', {}, "where ukl-build puts its own"),
    ('[tool.ukl-build.volumes.data]\nmount = "/etc"\n', {}, "where ukl-build puts its own"),
    (DATA + '[tool.ukl-build.volumes.more]\nmount = "/data/more"\n', {},
     "[tool.ukl-build.volumes.more] mount: /data/more and volume data's /data nest"),
    (DATA + 'size = "4M"\n', {}, "[tool.ukl-build.volumes.data] size: 4M is below the 8M"),
    (DATA + 'size = "lots"\n', {}, "expected a size"),
    (DATA + 'filesystem = "btrfs"\n', {}, "filesystem"),
    (DATA + '[tool.ukl-build.files."/data/seed"]\npath = "a.c"\n', {},
     "the volume would hide /data/seed of [tool.ukl-build.files]"),
    (DATA, {"volumes.data.mount": "/dev/sda"}, "config setting -C volumes.data.mount: /dev/sda"),
])
def test_bad_volumes_are_refused_naming_the_key(tmp_path: Path, extra: str,
                                                over: dict[str, str], message: str) -> None:
    (tmp_path / "a.c").write_text("int main(void) { return 0; }\n")
    with pytest.raises(ConfigError) as e:
        settings(tmp_path, extra, **over)
    assert message in str(e.value)


def test_at_most_six_volumes(tmp_path: Path) -> None:
    many = "".join(f'[tool.ukl-build.volumes.v{i}]\nmount = "/v{i}"\n' for i in range(7))
    with pytest.raises(ConfigError, match="7 volumes; at most 6"):
        settings(tmp_path, many)


def test_the_kernel_is_told_each_disk_in_name_order() -> None:
    vols = [record(), record("/srv", True)]
    micro = kernel_cmdline(ImageLine("quiet", [], volumes=vols), RunOptions(machine="microvm"))
    assert f"volume=/dev/vda:/data:ext4:rw:{OPTS}" in micro
    assert f"volume=/dev/vdb:/srv:ext4:ro:{OPTS}" in micro
    # transports 1 and 2 (0 is the NIC's), IRQ 5 + n
    assert "virtio_mmio.device=512@0xfeb00200:6" in micro
    assert "virtio_mmio.device=512@0xfeb00400:7" in micro
    q35 = kernel_cmdline(ImageLine("quiet", [], volumes=vols), RunOptions(machine="q35"))
    assert "volume=/dev/vdb:/srv" in q35 and "virtio_mmio" not in q35
    # firmware boots carry it built in, for q35
    assert f"volume=/dev/vda:/data:ext4:rw:{OPTS}" in builtin_cmdline("quiet", [], volumes=vols)
    # the transport with the RTC's IRQ 8 is skipped
    six = [record(f"/v{i}") for i in range(6)]
    line = kernel_cmdline(ImageLine("", [], volumes=six), RunOptions())
    assert ":8 " not in line + " " and "0xfeb00600" not in line


def test_disks_are_attached_in_name_order(tmp_path: Path) -> None:
    vols = {"logs": record("/logs", True), "data": record()}
    got = attach(vols, ["logs=l.img", f"data={tmp_path}/d.img"], None)
    assert [(a.name, a.file.name, a.scratch) for a in got] == [("data", "d.img", False),
                                                               ("logs", "l.img", False)]
    assert got[1].file.is_absolute()
    argv = drive_args(got, "microvm")
    assert argv[:4] == ["-drive", f"file={tmp_path}/d.img,if=none,id=vol-data,format=raw,"
                        "cache=writeback", "-device",
                        "virtio-blk-device,drive=vol-data,bus=virtio-mmio-bus.1"]
    assert argv[5].endswith(",readonly=on") and argv[7].endswith("bus=virtio-mmio-bus.2")
    assert drive_args(got, "q35")[3] == "virtio-blk-pci,drive=vol-data"


@pytest.mark.parametrize(("specs", "message"), [
    (["data"], "--volume data: expected NAME=PATH"),
    (["other=x.img"], "this image has no volume 'other' (its volumes: data, logs)"),
    (["data=a", "data=b", "logs=l"], "--volume data: given twice"),
    (["data=a"], "volume logs (/logs) is read-only: pass --volume logs=PATH"),
])
def test_bad_volume_options_are_refused(specs: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(RunError) as e:
        attach({"logs": record("/logs", True), "data": record()}, specs, tmp_path)
    assert message in str(e.value)


def test_without_a_file_a_volume_gets_a_scratch_one_and_says_so(tmp_path: Path) -> None:
    got = attach({"data": record(size=8 << 20)}, [], tmp_path)
    assert got == [Attached("data", record(size=8 << 20), tmp_path / "data.img", scratch=True)]
    err = io.StringIO()
    prepare(got, err)
    assert (tmp_path / "data.img").stat().st_size == 8 << 20
    assert "no --volume data=PATH, so a scratch file that is deleted when the VM ends" in \
        err.getvalue()
    with pytest.raises(RunError, match="has no file: pass --volume data=PATH"):
        attach({"data": record()}, [], None)


def test_a_new_volume_file_is_formatted_once_and_whole(tmp_path: Path) -> None:
    img = tmp_path / "data.img"
    err = io.StringIO()
    prepare(attach({"data": record(size=16 << 20)}, [f"data={img}"], None), err)
    assert f"volume data: created {img} (16 MiB, ext4)" in err.getvalue()
    dumped = subprocess.run([launcher_volumes.mkfs_command("ext4").replace("mkfs.ext4",
                                                                          "dumpe2fs"),
                             "-h", str(img)], capture_output=True, text=True, check=True).stdout
    assert "has_journal" in dumped and "Filesystem volume name:   data" in dumped
    assert img.stat().st_blocks * 512 < img.stat().st_size  # sparse
    before = img.stat().st_mtime_ns
    prepare(attach({"data": record(size=16 << 20)}, [f"data={img}"], None), io.StringIO())
    assert img.stat().st_mtime_ns == before  # an existing file is used as it is
    assert [p.name for p in tmp_path.iterdir()] == ["data.img"]


def test_a_failed_format_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher_volumes, "mkfs_command", lambda fs: "false")
    with pytest.raises(RunError, match="volume data: false failed"):
        prepare(attach({"data": record()}, [f"data={tmp_path}/d.img"], None), io.StringIO())
    assert list(tmp_path.iterdir()) == []


def test_a_volume_made_meanwhile_by_another_run_is_kept(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs creating one volume at once: the second never swaps the first's file
    (which its VM may have open) for its own."""
    img = tmp_path / "data.img"
    racer = tmp_path / "mkfs"
    racer.write_text(f"#!/bin/sh\necho theirs > {img}\n")
    racer.chmod(0o755)
    monkeypatch.setattr(launcher_volumes, "mkfs_command", lambda fs: str(racer))
    prepare(attach({"data": record()}, [f"data={img}"], None), io.StringIO())
    assert img.read_text() == "theirs\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.img", "mkfs"]


def test_what_is_not_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="is not a regular file"):
        prepare(attach({"data": record()}, [f"data={tmp_path}"], None), io.StringIO())
    with pytest.raises(RunError, match="/nowhere is not a directory"):
        prepare(attach({"data": record()}, ["data=/nowhere/d.img"], None), io.StringIO())
    with pytest.raises(RunError, match=r"is read-only and .* does not exist"):
        prepare(attach({"data": record(read_only=True)}, [f"data={tmp_path}/r.img"], None),
                io.StringIO())


def test_the_manifest_example_names_the_disk(tmp_path: Path) -> None:
    manifest = {"cmdline": "quiet", "args": [], "network": False, "init_arg_limit": 32,
                "images": {"bzimage": {"file": "bzImage"}}, "volumes": {"data": record()}}
    argv = qemu_argv(manifest, tmp_path, RunOptions(), "tcg",  # type: ignore[arg-type]
                     check_files=False)
    assert "file=data.img,if=none,id=vol-data,format=raw,cache=writeback" in argv


def test_run_and_the_wheels_launcher_take_volume_options() -> None:
    import argparse

    from ukl_build.launcher.cli import add_run_arguments, options_from_args
    from ukl_build.launcher.manifest import default_run

    parser = argparse.ArgumentParser()
    add_run_arguments(parser, default_run())
    ns = parser.parse_args(["--volume", "data=a.img", "-v", "logs=b.img"])
    assert options_from_args(ns, default_run()).volumes == ["data=a.img", "logs=b.img"]
