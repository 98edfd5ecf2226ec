"""The QEMU launcher without booting anything: command lines, exit codes, KVM choice."""

from __future__ import annotations

import io
import json
import socket
import struct
from pathlib import Path

import pytest

from ukl_build.launcher.accel import choose_accel, probe_image
from ukl_build.launcher.cmdline import host_tsc_khz
from ukl_build.launcher.console import wait_status_to_exit
from ukl_build.launcher.options import RunError, RunOptions
from ukl_build.launcher.qemu import BootFiles, qemu_argv
from ukl_build.launcher.run import run_image

from conftest import fake_manifest


def image_dir(tmp_path: Path, **extra: object) -> Path:
    (tmp_path / "app.bzImage").write_bytes(b"x")
    manifest = fake_manifest(cmdline="quiet ip=10.0.2.15", args=["--port", "8080"], **extra)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_wait_status() -> None:
    assert wait_status_to_exit(0x0300) == 3
    assert wait_status_to_exit(0) == 0
    assert wait_status_to_exit(0x000B) == 128 + 11  # killed by SIGSEGV


def test_microvm_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ukl_build.launcher.qemu.host_tsc_khz", lambda: 2445400)
    d = image_dir(tmp_path, network=True)
    argv = qemu_argv(json.loads((d / "manifest.json").read_text()), d,
                     RunOptions(forward=["18080:8080"]), "tcg")
    assert argv[argv.index("-M") + 1].startswith("microvm")
    assert "-no-reboot" in argv and argv[argv.index("-accel") + 1] == "tcg"
    append = argv[argv.index("-append") + 1]
    assert append == ("console=ttyS0 reboot=t tsc=reliable lapic_timer_khz=1000000 init_poison=off "
                      "tsc_early_khz=2445400 "
                      "virtio_mmio.device=512@0xfeb00000:5 quiet ip=10.0.2.15 -- --port 8080")
    kvm = qemu_argv(json.loads((d / "manifest.json").read_text()), d, RunOptions(), "kvm")
    assert "tsc=reliable" not in kvm[kvm.index("-append") + 1]  # TCG only: see TCG_CLOCK_PARAM
    assert "user,id=n0,hostfwd=tcp:127.0.0.1:18080-:8080" in argv
    assert "virtio-net-device,netdev=n0,bus=virtio-mmio-bus.0" in argv


def test_q35_uses_pci_nic(tmp_path: Path) -> None:
    d = image_dir(tmp_path, network=True)
    argv = qemu_argv(json.loads((d / "manifest.json").read_text()), d,
                     RunOptions(machine="q35"), "tcg")
    assert argv[argv.index("-M") + 1] == "q35" and "virtio-net-pci,netdev=n0" in argv


def test_kernel_log_drops_quiet(tmp_path: Path) -> None:
    d = image_dir(tmp_path)
    argv = qemu_argv(json.loads((d / "manifest.json").read_text()), d,
                     RunOptions(kernel_log=True), "tcg")
    assert "quiet" not in argv[argv.index("-append") + 1]


def test_missing_format(tmp_path: Path) -> None:
    d = image_dir(tmp_path)
    with pytest.raises(RunError, match="'pvh' is not in this build"):
        qemu_argv(json.loads((d / "manifest.json").read_text()), d, RunOptions(image="pvh"), "tcg")


def testprobe_image_is_multiboot() -> None:
    img = probe_image()
    magic, flags, checksum = struct.unpack("<3I", img[:12])
    assert magic == 0x1BADB002 and (magic + flags + checksum) & 0xFFFFFFFF == 0


def test_auto_without_kvm_picks_tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ukl_build.launcher.accel.os.access", lambda *a: False)
    err = io.StringIO()
    assert choose_accel(RunOptions(accel="auto"), err) == "tcg"
    assert "not accessible" in err.getvalue()


def test_explicit_accel_is_not_probed() -> None:
    assert choose_accel(RunOptions(accel="kvm"), io.StringIO()) == "kvm"


def test_app_args_after_double_dash() -> None:
    from ukl_build.launcher.cli import split_app_args

    assert split_app_args(["img", "--timeout", "5"]) == (["img", "--timeout", "5"], None)
    assert split_app_args(["img", "--", "threads", "-x"]) == (["img"], ["threads", "-x"])
    assert split_app_args(["--"]) == ([], [])


def test_cli_passes_app_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ukl_build import cli

    seen = {}
    image_dir(tmp_path)
    monkeypatch.setattr(cli, "run_image", lambda d, opts: seen.setdefault("args", opts.args) and 0)
    cli.main(["run", str(tmp_path), "--timeout", "5", "--", "threads", "2"])
    assert seen["args"] == ["threads", "2"]


def test_extra_qemu_args_come_last(tmp_path: Path) -> None:
    d = image_dir(tmp_path)
    argv = qemu_argv(json.loads((d / "manifest.json").read_text()), d,
                     RunOptions(qemu_args=["-icount", "shift=0"]), "tcg")
    assert argv[-2:] == ["-icount", "shift=0"]


AWKWARD = ["two words", "", 'quo""te', "tab\there", "a=b", "=lead", "é à", "-x", "trailing ",
           "  lead", "x=", "nbsp\xa0inside", 'last"odd']


def test_app_args_round_trip_through_the_kernels_parser() -> None:
    from ukl_build.launcher.cmdline import kernel_init_args, quote_app_args

    tail = quote_app_args(AWKWARD)
    assert kernel_init_args(tail.encode()) == [a.encode() for a in AWKWARD]


@pytest.mark.parametrize("bad", ['x="y z"', '"lead', "--", 'a "b c'])
def test_args_the_kernel_cannot_carry_are_refused(tmp_path: Path, bad: str) -> None:
    d = image_dir(tmp_path)
    with pytest.raises(RunError, match="cannot be passed on a kernel command line"):
        qemu_argv(json.loads((d / "manifest.json").read_text()), d,
                  RunOptions(args=["ok", bad]), "tcg")


def test_cmdline_length_and_arg_count_checked(tmp_path: Path) -> None:
    d = image_dir(tmp_path, init_arg_limit=4)
    manifest = json.loads((d / "manifest.json").read_text())
    with pytest.raises(RunError, match="5 arguments, but the kernel passes at most 4"):
        qemu_argv(manifest, d, RunOptions(args=list("abcde")), "tcg")
    with pytest.raises(RunError, match=r"kernel command line is 2[0-9]{3} bytes"):
        qemu_argv(manifest, d, RunOptions(args=["y" * 2040]), "tcg")


def test_run_takes_machine_memory_smp_from_the_image(tmp_path: Path) -> None:
    from ukl_build.cli import parser
    from ukl_build.launcher.cli import options_from_args
    from ukl_build.launcher.manifest import default_run, run_defaults

    d = image_dir(tmp_path, run={"machine": "q35", "memory": "512M", "smp": 2, "accel": "tcg",
                                 "forward": ["18080:8080"]})
    defaults = run_defaults(json.loads((d / "manifest.json").read_text()))
    opts = options_from_args(parser().parse_args(["run", str(d)]), defaults)
    assert (opts.machine, opts.memory, opts.smp, opts.forward) == ("q35", "512M", 2, ["18080:8080"])
    opts = options_from_args(parser().parse_args(["run", str(d), "--smp", "1", "-m", "1G"]), defaults)
    assert (opts.machine, opts.memory, opts.smp) == ("q35", "1G", 1)
    # RunOptions' own defaults, the ones a project's run table starts from
    plain = default_run()
    assert (plain["machine"], plain["memory"], plain["smp"]) == ("microvm", "256M", 1)


def test_an_odd_quote_would_swallow_the_next_argument() -> None:
    from ukl_build.launcher.cmdline import quote_app_args

    assert quote_app_args(['quo"te']) == 'quo"te'  # last: fine
    with pytest.raises(ValueError, match=r"argument 1 'quo\"te' cannot be passed.*odd number"):
        quote_app_args(['quo"te', "next"])


def firmware_dir(tmp_path: Path, **extra: object) -> tuple[Path, dict[str, object]]:
    for name in ("app.efi", "app.disk.img"):
        (tmp_path / name).write_bytes(b"x")
    manifest = fake_manifest(
        cmdline="quiet", args=["a b"], cmdline_builtin='console=ttyS0 reboot=t quiet -- "a b"',
        images={"efi": {"file": "app.efi", "sha256": "0" * 64, "size": 1},
                "disk": {"file": "app.disk.img", "sha256": "0" * 64, "size": 1}}, **extra)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path, manifest


def test_firmware_formats_boot_ovmf_without_a_command_line(tmp_path: Path) -> None:
    from ukl_build.launcher.firmware import FirmwareFiles

    d, manifest = firmware_dir(tmp_path)
    files = FirmwareFiles(tmp_path / "vars.fd", tmp_path / "esp")
    disk = qemu_argv(manifest, d, RunOptions(machine="q35", image="disk"), "tcg",  # type: ignore[arg-type]
                     check_files=False, boot=BootFiles(firmware=files))
    assert "-append" not in disk and "-kernel" not in disk
    assert disk[disk.index("-M") + 1] == "q35"
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd" in disk
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'vars.fd'}" in disk
    assert "if=none,id=disk0,format=raw,readonly=on,file=app.disk.img" in disk
    efi = qemu_argv(manifest, d, RunOptions(machine="q35", image="efi", secure_boot=True,  # type: ignore[arg-type]
                                            firmware_vars="enrolled.fd"),
                    "tcg", check_files=False, boot=BootFiles(firmware=files))
    assert efi[efi.index("-M") + 1] == "q35,smm=on"  # Secure Boot variables behind SMM
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd" in efi
    assert "driver=cfi.pflash01,property=secure,value=on" in efi
    # Not -kernel, which OVMF would start without its Secure Boot check: a FAT drive.
    assert f"if=none,id=disk0,format=raw,readonly=on,file=fat:{tmp_path / 'esp'}" in efi


@pytest.mark.parametrize(("opts", "message"), [
    (RunOptions(machine="q35", image="disk", args=["x"]), "command line built in"),
    (RunOptions(machine="q35", image="disk", extra_cmdline="debug"), "command line built in"),
    (RunOptions(machine="q35", image="efi", kernel_log=True), "command line built in"),
    (RunOptions(image="disk"), "made for q35: boot it with --machine q35"),
    (RunOptions(machine="q35", image="disk", secure_boot=True), "--secure-boot needs --firmware-vars"),
])
def test_firmware_boot_refuses_what_it_cannot_honour(tmp_path: Path, opts: RunOptions,
                                                      message: str) -> None:
    d, manifest = firmware_dir(tmp_path)
    with pytest.raises(RunError, match=message):
        qemu_argv(manifest, d, opts, "tcg")  # type: ignore[arg-type]


def test_firmware_refusal_is_recognised() -> None:
    from ukl_build.launcher.console import Console

    console = Console(io.StringIO())
    console.feed(b"\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001 \"UEFI Misc Device\"\r\n")
    assert console.refused is None and "\x1b" not in console.out.getvalue()  # type: ignore[attr-defined]
    console.feed(b'BdsDxe: failed to load Boot0001 "UEFI Misc Device" from PciRoot(0x0)/'
                 b"Pci(0x1,0x0): Access Denied\r\n")
    assert console.refused is not None and console.refused.endswith("Access Denied")


def test_forward_to_an_image_without_network_is_refused(tmp_path: Path) -> None:
    d = image_dir(tmp_path, network=False)
    with pytest.raises(RunError, match=r"--forward 18080:80: .* has no network \(its kernel "
                                       r"has no virtio-net driver"):
        qemu_argv(json.loads((d / "manifest.json").read_text()), d,
                  RunOptions(forward=["18080:80"]), "tcg")


def test_qemu_failing_to_start_says_why(tmp_path: Path) -> None:
    """A forwarded port already in use: QEMU's own words, not "QMP: Connection reset".
    QEMU refuses the port before it looks at the kernel, so any image will do."""
    d = image_dir(tmp_path, network=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RunError) as e:
            run_image(d, RunOptions(forward=[f"{port}:8080"], accel="tcg", timeout=30),
                      out=io.StringIO(), err=io.StringIO())
    assert "QEMU said:" in str(e.value)
    assert f"Could not set up host forwarding rule 'tcp:127.0.0.1:{port}-:8080'" in str(e.value)


def test_host_tsc_khz_from_bogomips() -> None:
    """x86 Linux: BogoMIPS = tsc_khz / 500 (this host: 4890.80, "tsc: Detected 2445.402 MHz")."""
    info = "flags\t\t: fpu tsc constant_tsc nonstop_tsc\nbogomips\t: 4890.80\n"
    assert host_tsc_khz(info) == 2445400
    assert host_tsc_khz(info.replace(" nonstop_tsc", "")) is None  # rate may change: not trusted
    assert host_tsc_khz("processor\t: 0\n") is None  # not x86, or no bogomips
