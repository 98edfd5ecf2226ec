"""The UEFI formats end to end: efi and disk boot through OVMF on q35, and Secure Boot.

One kernel (hello, UKL mode, on the microvm recipe, with the efi recipe and its command
line built in) serves every test here: a signed and an unsigned build differ only in the
signing step, which runs after the kernel build.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest

from ukl_build.cache import Cache
from ukl_build.efi import ESP_TYPE, is_efi_application, make_disk
from ukl_build.errors import ConfigError
from ukl_build.kbuild import reproducible_env
from ukl_build.pipeline import BuildResult, build
from ukl_build.progress import Reporter

from conftest import EXAMPLE_RECIPES, copy_example, run_cli, valid_cyclonedx

pytestmark = pytest.mark.kernel


class Keys:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key = directory / "db.key"
        self.cert = directory / "db.crt"
        self.vars = directory / "OVMF_VARS_enrolled.fd"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """A signing key pair, its certificate enrolled as PK, KEK and db in a copy of OVMF's
    empty variable store, with Secure Boot on (virt-firmware's virt-fw-vars)."""
    k = Keys(tmp_path_factory.mktemp("keys"))
    subprocess.run(["openssl", "req", "-quiet", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    k.key, "-new", "-x509", "-sha256", "-days", "3650",
                    "-subj", "/CN=ukl-build test signing key/", "-out", k.cert],
                   check=True, capture_output=True)
    owner = str(uuid.uuid4())
    vars_tool = Path(sys.executable).parent / "virt-fw-vars"
    subprocess.run([vars_tool, "--input", "/usr/share/OVMF/OVMF_VARS_4M.fd",
                    "--output", k.vars, "--set-pk", owner, k.cert, "--add-kek", owner, k.cert,
                    "--add-db", owner, k.cert, "--secure-boot"], check=True, capture_output=True)
    return k


@pytest.fixture(scope="module")
def hello_uefi(cache: Cache, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    project = copy_example("hello", tmp_path_factory.mktemp("uefi"))
    # Without the network of hello's own recipes, in the project itself so that every build
    # here has it: the subject is the firmware boot, and the kernel (a configuration of its
    # own anyway: the efi recipe, the built-in command line) compiles faster without.
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    assert EXAMPLE_RECIPES in text
    pyproject.write_text(text.replace(EXAMPLE_RECIPES, 'recipes = ["microvm"]'))
    return build(project, {"formats": "efi;disk", "sign.cert": str(keys.cert),
                           "sign.key": str(keys.key)}, cache=cache)


def _run(image_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("run", str(image_dir), "--timeout", "120", *args, timeout=180)


@pytest.mark.parametrize("fmt", ["efi", "disk"])
def test_boots_through_ovmf_and_returns_status(hello_uefi: BuildResult, fmt: str) -> None:
    proc = _run(hello_uefi.images.directory, "--format", fmt)
    assert "Hello, world, from a unikernel! (CPL 0)" in proc.stdout, proc.stderr
    assert proc.returncode == 3, proc.stderr
    assert f"({fmt}, q35, tcg)" in proc.stderr
    assert "\x1b" not in proc.stdout  # the firmware's screen clearing does not reach the user


def test_uefi_images_and_manifest(hello_uefi: BuildResult, keys: Keys) -> None:
    images = hello_uefi.images
    m = images.manifest
    assert list(m["images"]) == ["efi", "disk"] and m["run"]["image"] == "efi"
    assert m["run"]["machine"] == "q35" and m["signed"] is True
    assert m["cmdline_builtin"] == "console=ttyS0 reboot=t quiet -- world"
    config = images.directory / m["kernel"]["config"]["file"]
    assert 'CONFIG_CMDLINE="console=ttyS0 reboot=t quiet -- world"' in config.read_text()
    assert "efi" in m["kernel"]["recipes"] and "q35" in m["kernel"]["recipes"]
    efi = images.image("efi")
    assert is_efi_application(efi)
    subprocess.run(["sbverify", "--cert", keys.cert, efi], check=True, capture_output=True)
    disk = images.image("disk")
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], check=True,
                                      capture_output=True, text=True).stdout)["partitiontable"]
    (part,) = table["partitions"]
    assert table["label"] == "gpt" and part["type"] == ESP_TYPE and part["start"] == 2048
    inside = subprocess.run(["mtype", "-i", f"{disk}@@1M", "::/EFI/BOOT/BOOTX64.EFI"],
                            check=True, capture_output=True).stdout
    assert inside == efi.read_bytes()
    minfo = subprocess.run(["minfo", "-i", f"{disk}@@1M", "::"], check=True,
                           capture_output=True, text=True).stdout
    assert 'disk type="FAT32' in minfo
    sbom = valid_cyclonedx((images.directory / "sbom.cdx.json").read_text())
    digests = {h["content"] for h in sbom["metadata"]["component"]["hashes"]}
    assert {m["images"]["efi"]["sha256"], m["images"]["disk"]["sha256"]} <= digests
    # The toolchain with versions, and the app's own source files with their digests.
    tools = {t["name"]: t["version"] for t in sbom["metadata"]["tools"]["components"]}
    assert tools["gcc"].count(".") == 2 and tools["binutils"].startswith("2.")
    source = hello_uefi.settings.project_dir / "src" / "hello.c"
    (app,) = [c for c in sbom["components"] if c["bom-ref"].startswith("app:")]
    assert app["components"] == [{"type": "file", "bom-ref": "app-file:src/hello.c",
                                  "name": "src/hello.c", "hashes": [
                                      {"alg": "SHA-256",
                                       "content": hashlib.sha256(source.read_bytes()).hexdigest()}]}]


def test_built_in_command_line_is_not_overridden_at_boot(hello_uefi: BuildResult) -> None:
    proc = _run(hello_uefi.images.directory, "--format", "disk", "--", "other")
    assert proc.returncode == 1 and "command line built in" in proc.stderr


def test_secure_boot_starts_the_signed_images(hello_uefi: BuildResult, keys: Keys) -> None:
    enrolled = keys.vars.read_bytes()
    for fmt in ("disk", "efi"):
        proc = _run(hello_uefi.images.directory, "--format", fmt, "--secure-boot",
                    "--firmware-vars", str(keys.vars))
        assert "Hello, world, from a unikernel!" in proc.stdout, proc.stderr
        assert proc.returncode == 3, proc.stderr
    assert keys.vars.read_bytes() == enrolled  # each boot writes to its own copy


def test_secure_boot_refuses_unsigned_and_tampered_images(
        hello_uefi: BuildResult, keys: Keys, cache: Cache, tmp_path: Path) -> None:
    # Unsigned: the same project without [sign]; the kernel is the signed build's.
    unsigned = build(hello_uefi.settings.project_dir, {"formats": "efi;disk"}, cache=cache,
                     out_dir=tmp_path / "unsigned")
    assert not unsigned.kernel_built and unsigned.images.manifest["signed"] is False
    # Tampered: one byte of the signed kernel changed after signing, then put on a disk.
    tampered = tmp_path / "tampered"
    shutil.copytree(hello_uefi.images.directory, tampered)
    efi = tampered / hello_uefi.images.manifest["images"]["efi"]["file"]
    data = bytearray(efi.read_bytes())
    data[len(data) // 2] ^= 0x01
    efi.write_bytes(bytes(data))
    disk = tampered / hello_uefi.images.manifest["images"]["disk"]["file"]
    disk.unlink()
    with Reporter(None) as r:
        make_disk(efi, disk, reproducible_env(cache, 315532800), r)
    for image_dir in (unsigned.images.directory, tampered):
        for fmt in ("disk", "efi"):
            proc = _run(image_dir, "--format", fmt, "--secure-boot",
                        "--firmware-vars", str(keys.vars))
            assert "Hello" not in proc.stdout, (image_dir, fmt)
            assert proc.returncode == 125, proc.stderr
            assert "the firmware refused to start the image" in proc.stderr
            assert "Access Denied" in proc.stderr
        # Without Secure Boot the same images start: the refusal was the signature check.
    proc = _run(unsigned.images.directory, "--format", "disk")
    assert proc.returncode == 3, proc.stderr


def test_key_from_the_environment_signs_the_same(hello_uefi: BuildResult, keys: Keys,
                                                 cache: Cache, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    project = hello_uefi.settings.project_dir
    settings = {"formats": "efi", "sign.cert": str(keys.cert), "sign.key-env": "TEST_DB_KEY"}
    with pytest.raises(ConfigError, match=r"-C sign.key-env: the environment variable "
                                          r"TEST_DB_KEY is not set"):
        build(project, settings, cache=cache, out_dir=tmp_path / "none")
    assert not (tmp_path / "none").exists()
    monkeypatch.setenv("TEST_DB_KEY", keys.key.read_text())
    again = build(project, settings, cache=cache, out_dir=tmp_path / "env")
    # sbsign's signature is deterministic: the same key gives the same signed image.
    assert again.images.image("efi").read_bytes() == hello_uefi.images.image("efi").read_bytes()
    assert not list(again.images.directory.glob("*.pem"))


def test_uefi_wheel_passes_check_wheel_contents(hello_uefi: BuildResult, tmp_path: Path) -> None:
    from ukl_build.wheel import write_wheel

    name = write_wheel(hello_uefi.settings, hello_uefi.images, tmp_path, 315532800)
    with zipfile.ZipFile(tmp_path / name) as zf:
        names = set(zf.namelist())
    assert {"ukl_hello/_image/ukl_hello.efi", "ukl_hello/_image/ukl_hello.disk.img"} <= names
    check = subprocess.run([sys.executable, "-m", "check_wheel_contents", str(tmp_path / name)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
