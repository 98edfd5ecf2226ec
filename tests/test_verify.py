"""``python -m ukl_build verify``: two independent builds, compared."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

import ukl_build.verify as verify_mod
from ukl_build.cache import Cache
from ukl_build.pipeline import BuildOptions
from ukl_build.progress import Reporter
from ukl_build.verify import Output, compare, elf_section_at, first_difference

from conftest import copy_example, run_cli


def test_first_difference_points_into_the_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 100_000)
    b.write_bytes(b"x" * 70_001 + b"y" + b"x" * 29_998)
    assert first_difference(a, a, Reporter(None)) is None
    assert first_difference(a, b, Reporter(None)) == \
        "first differing byte at offset 0x11171 (sizes 100000 and 100000)"
    # JSON: the key; ELF: the section
    ja, jb = tmp_path / "m.json", tmp_path / "n.json"
    ja.write_text(json.dumps({"images": {"efi": {"sha256": "1"}}, "name": "x"}))
    jb.write_text(json.dumps({"images": {"efi": {"sha256": "2"}}, "name": "x"}))
    assert first_difference(ja, jb, Reporter(None)) == "JSON differs at .images.efi.sha256"
    elf_a, elf_b = tmp_path / "true", tmp_path / "true2"
    shutil.copyfile("/bin/true", elf_a)
    data = bytearray(elf_a.read_bytes())
    section = elf_section_at(elf_a, 0x2000, Reporter(None))  # some code section of /bin/true
    assert section is not None and section.startswith(".")
    data[0x2000] ^= 0xFF
    elf_b.write_bytes(bytes(data))
    assert f"in ELF section {section}" in (first_difference(elf_a, elf_b, Reporter(None)) or "")
    # Wheels: the member
    wa, wb = tmp_path / "a.whl", tmp_path / "b.whl"
    for path, text in ((wa, "one"), (wb, "two")):
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(zipfile.ZipInfo("pkg/_image/manifest.json", (1980, 1, 1, 0, 0, 0)), text)
    assert first_difference(wa, wb, Reporter(None)) == "member pkg/_image/manifest.json differs"


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


class _FakeBuilds:
    """``build`` and ``write_wheel`` as verify calls them, making small files whose bytes
    are ``content`` (the same in every build unless told otherwise)."""

    def __init__(self, content: dict[str, bytes]) -> None:
        self.content, self.calls = content, []  # type: list[dict[str, object]]

    def build(self, project: Path, config_settings: object, *, cache: Cache, stream: object,
              out_dir: Path, options: BuildOptions) -> SimpleNamespace:
        self.calls.append({"project": project, "cache": cache.root,
                           "shared": options.shared_compilers})
        out_dir.mkdir(parents=True)
        for name in ("ukl_hello.bzImage", "manifest.json"):
            (out_dir / name).write_bytes(self.content.get(name, b"same"))
        work = out_dir.parent / "work"
        work.mkdir()
        (work / "app").write_bytes(b"app")
        (work / "vmlinux").write_bytes(b"vmlinux")
        images = SimpleNamespace(files=lambda: sorted(out_dir.iterdir()))
        return SimpleNamespace(settings=None, images=images, app=SimpleNamespace(path=work / "app"),
                               kernel=SimpleNamespace(vmlinux=work / "vmlinux"))

    @staticmethod
    def write_wheel(settings: object, images: object, wheel_dir: Path, epoch: int) -> str:
        (wheel_dir / "x-0.1-py3-none-any.whl").write_bytes(b"wheel")
        return "x-0.1-py3-none-any.whl"


def test_two_builds_or_one_against_a_reference(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The orchestration (the end-to-end run is the farm's `verify --against`)."""
    fake = _FakeBuilds({})
    monkeypatch.setattr(verify_mod, "build", fake.build)
    monkeypatch.setattr(verify_mod, "write_wheel", fake.write_wheel)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text("")
    (project / "build").mkdir()  # never copied
    report = verify_mod.verify(project, None, tmp_path / "two")
    assert report.difference is None and report.against is None
    assert [label for label, _ in report.compared] == [
        "app binary (before linking)", "vmlinux (the linked kernel)", "image manifest.json",
        "image ukl_hello.bzImage", "wheel x-0.1-py3-none-any.whl"]
    # Each build: its own copy of the project, its own empty cache, nothing shared.
    assert [c["cache"] for c in fake.calls] == [tmp_path / "two/a/cache",
                                                tmp_path / "two/second-build/b/cache"]
    assert all(c["shared"] is False for c in fake.calls)
    assert not (tmp_path / "two/a/src/proj/build").exists()

    # --against an image directory: one build, compared file by file with it.
    fake.calls.clear()
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "manifest.json").write_bytes(b"same")
    (shipped / "ukl_hello.bzImage").write_bytes(b"other")
    report = verify_mod.verify(project, None, tmp_path / "one", against=shipped)
    assert len(fake.calls) == 1 and report.against == shipped
    assert report.difference is not None and report.difference.startswith("image ukl_hello.bzImage")
    (shipped / "ukl_hello.bzImage").write_bytes(b"same")
    report = verify_mod.verify(project, None, tmp_path / "one-again", against=shipped)
    assert report.difference is None
    out = io.StringIO()
    assert verify_mod.print_report(report, out) == 0
    assert f"2 outputs identical to {shipped}" in out.getvalue()
    # --against a wheel: the wheels are compared.
    wheel = tmp_path / "x-0.1-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    report = verify_mod.verify(project, None, tmp_path / "w", against=wheel)
    assert [label for label, _ in report.compared] == ["wheel x-0.1-py3-none-any.whl"]


def test_against_must_be_an_image_dir_or_a_wheel(tmp_path: Path) -> None:
    project = copy_example("hello", tmp_path)
    for bad in (tmp_path / "missing", project, project / "pyproject.toml"):
        proc = run_cli("verify", str(project), "--against", str(bad), "--keep",
                       str(tmp_path / "k"), timeout=60)
        assert proc.returncode != 0
        assert f"verify --against {bad}: neither a wheel" in proc.stderr, proc.stderr
    assert not (tmp_path / "k").exists()  # refused before anything was made
