"""``python -m ukl_build verify``: two independent builds, compared."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from ukl_build.verify import Output, compare, elf_section_at, first_difference

from conftest import copy_example, run_cli


def test_first_difference_points_into_the_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 100_000)
    b.write_bytes(b"x" * 70_001 + b"y" + b"x" * 29_998)
    assert first_difference(a, a) is None
    assert first_difference(a, b) == "first differing byte at offset 0x11171 (sizes 100000 and 100000)"
    # JSON: the key; ELF: the section
    ja, jb = tmp_path / "m.json", tmp_path / "n.json"
    ja.write_text(json.dumps({"images": {"efi": {"sha256": "1"}}, "name": "x"}))
    jb.write_text(json.dumps({"images": {"efi": {"sha256": "2"}}, "name": "x"}))
    assert first_difference(ja, jb) == "JSON differs at .images.efi.sha256"
    elf_a, elf_b = tmp_path / "true", tmp_path / "true2"
    shutil.copyfile("/bin/true", elf_a)
    data = bytearray(elf_a.read_bytes())
    section = elf_section_at(elf_a, 0x2000)  # some code section of /bin/true
    assert section is not None and section.startswith(".")
    data[0x2000] ^= 0xFF
    elf_b.write_bytes(bytes(data))
    assert f"in ELF section {section}" in (first_difference(elf_a, elf_b) or "")
    # Wheels: the member
    wa, wb = tmp_path / "a.whl", tmp_path / "b.whl"
    for path, text in ((wa, "one"), (wb, "two")):
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(zipfile.ZipInfo("pkg/_image/manifest.json", (1980, 1, 1, 0, 0, 0)), text)
    assert first_difference(wa, wb) == "member pkg/_image/manifest.json differs"


def test_compare_reports_the_first_difference_in_order(tmp_path: Path) -> None:
    files = {}
    for name, content in (("app1", b"A"), ("app2", b"A"), ("img1", b"B"), ("img2", b"C")):
        files[name] = tmp_path / name
        files[name].write_bytes(content)
    report = compare([Output("app", files["app1"]), Output("image x", files["img1"])],
                     [Output("app", files["app2"]), Output("image x", files["img2"])], tmp_path)
    assert [label for label, _ in report.compared] == ["app"]
    assert report.difference is not None and report.difference.startswith("image x: first")
    report = compare([Output("app", files["app1"])], [Output("other", files["app2"])], tmp_path)
    assert report.difference == "the builds made different files: app, other"


@pytest.mark.kernel
def test_verify_two_builds_from_empty_caches_are_identical(tmp_path: Path) -> None:
    """Two cold builds of hello (user mode: the smallest configuration), nothing shared."""
    project = copy_example("hello", tmp_path)
    # Without the hardened recipe: two cold kernel builds, each ~1.6x longer with it.
    proc = run_cli("verify", str(project), "-C", "mode=user", "-C", "hardened=false",
                   "--keep", str(tmp_path / "v"), timeout=3000)  # shares 2 cores with a worker
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "verify: reproducible: " in proc.stdout
    for label in ("app binary", "vmlinux", "image ukl_hello.bzImage", "image manifest.json",
                  "image sbom.cdx.json", "image ukl_hello.config", "wheel ukl_hello-0.1.0-"):
        assert label in proc.stdout
    caches = [tmp_path / "v" / "a" / "cache", tmp_path / "v" / "second-build" / "b" / "cache"]
    assert all((c / "ccache").is_dir() for c in caches)  # each its own compiler cache
