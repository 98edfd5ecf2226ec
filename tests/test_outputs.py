"""Output paths: ukl-build replaces only what it created, and writes files others can read."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.metadata import Metadata

from ukl_build.artifacts import ImageSet, check_out_dir, owned_files, remove_owned, replace_dir
from ukl_build.errors import ConfigError
from ukl_build.settings import load_settings
from ukl_build.wheel import write_sdist, write_wheel

from conftest import REPO, copy_example, fake_manifest, run_cli


def fake_image_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    manifest = fake_manifest(kernel={"config": {"file": "a.config"}},
                             images={"bzimage": {"file": "a.bzImage"}})
    (path / "manifest.json").write_text(json.dumps(manifest))
    for name in ("a.config", "a.bzImage", "sbom.cdx.json"):
        (path / name).write_text("{}")
    return path


def test_out_dir_rules(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    check_out_dir(tmp_path / "new", project)  # does not exist yet: fine
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty", project)
    ours = fake_image_dir(tmp_path / "ours")
    check_out_dir(ours, project)
    assert owned_files(ours) == {"manifest.json", "a.config", "a.bzImage", "sbom.cdx.json"}
    for refused in (project, tmp_path):  # the project, or a directory holding it
        with pytest.raises(ConfigError, match="is the project directory or holds it"):
            check_out_dir(refused, project)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and not a ukl-build image directory"):
        check_out_dir(foreign, project)
    (ours / "notes.txt").write_text("added by the user")  # ours no longer: refused too
    with pytest.raises(ConfigError):
        check_out_dir(ours, project)


def test_failure_cleanup_and_replace_touch_only_our_files(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    remove_owned(foreign)
    assert (foreign / "keep.txt").read_text() == "x"
    ours = fake_image_dir(tmp_path / "ours")
    new = fake_image_dir(tmp_path / "new")
    replace_dir(new, ours)
    assert owned_files(ours) is not None and not new.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    (ours / "keep.txt").write_text("x")  # appeared after the check: not replaced
    with pytest.raises(ConfigError, match="did not create"):
        replace_dir(fake_image_dir(tmp_path / "new2"), ours)
    assert (ours / "keep.txt").exists()


def test_cli_build_out_refuses_the_project_and_foreign_dirs(tmp_path: Path) -> None:
    project = copy_example("hello", tmp_path)
    before = sorted(p.name for p in project.iterdir())
    proc = run_cli("build", str(project), "--out", str(project))
    assert proc.returncode == 1 and "is the project directory" in proc.stderr
    foreign = tmp_path / "stuff"
    foreign.mkdir()
    (foreign / "data.txt").write_text("precious")
    proc = run_cli("build", str(project), "--out", str(foreign))
    assert proc.returncode == 1 and "refusing to replace what ukl-build did not create" in proc.stderr
    assert (foreign / "data.txt").read_text() == "precious"
    assert sorted(p.name for p in project.iterdir()) == before  # no build dir either


def test_wheel_and_sdist_are_world_readable(tmp_path: Path) -> None:
    project = copy_example("hello", tmp_path)
    settings = load_settings(project)
    sdist = tmp_path / "dist" / write_sdist(settings, tmp_path / "dist", 315532800)
    images = ImageSet(fake_image_dir(tmp_path / "img"),
                      json.loads((tmp_path / "img/manifest.json").read_text()))
    wheel = tmp_path / "dist" / write_wheel(settings, images, tmp_path / "dist", 315532800)
    for f in (sdist, wheel):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    with tarfile.open(sdist) as tar:
        assert "ukl_hello-0.1.0/src/hello.c" in tar.getnames()


def test_wheel_and_sdist_carry_the_projects_metadata(tmp_path: Path) -> None:
    """METADATA/PKG-INFO come from [project]; license files go to .dist-info/licenses/."""
    project = copy_example("hello", tmp_path)
    (project / "LICENSE").write_text("MIT License\n")
    text = (project / "pyproject.toml").read_text()
    (project / "pyproject.toml").write_text(text.replace(
        '[project]\n', '[project]\nlicense = "MIT"\nlicense-files = ["LICENSE"]\n'
        'dependencies = ["attrs>=22"]\n', 1))
    settings = load_settings(project)
    images = ImageSet(fake_image_dir(tmp_path / "img"),
                      json.loads((tmp_path / "img/manifest.json").read_text()))
    wheel = tmp_path / "dist" / write_wheel(settings, images, tmp_path / "dist", 315532800)
    sdist = tmp_path / "dist" / write_sdist(settings, tmp_path / "dist", 315532800)
    with zipfile.ZipFile(wheel) as zf:
        info = "ukl_hello-0.1.0.dist-info"
        assert zf.read(f"{info}/licenses/LICENSE") == b"MIT License\n"
        metadata = zf.read(f"{info}/METADATA")
        meta = Metadata.from_email(metadata)
        assert f"{info}/licenses/LICENSE" in zf.read(f"{info}/RECORD").decode()
    assert meta.license_expression == "MIT" and meta.license_files == ["LICENSE"]
    assert [str(r) for r in meta.requires_dist or []] == ["attrs>=22"]
    with tarfile.open(sdist) as tar:
        pkg_info = tar.extractfile("ukl_hello-0.1.0/PKG-INFO")
        assert pkg_info is not None and pkg_info.read() == metadata


@pytest.mark.parametrize("make, message", [
    (lambda p, outside: (p / "leak.txt").symlink_to(outside),
     "sdist: leak.txt is a symbolic link to {outside}, outside the project"),
    (lambda p, outside: (p / "src" / "gone.h").symlink_to("missing.h"),
     "sdist: src/gone.h is a symbolic link to missing.h, which does not exist"),
    (lambda p, outside: os.mkfifo(p / "pipe"),
     "sdist: pipe is a FIFO, not a regular file"),
])
def test_sdist_packs_nothing_outside_the_project_and_no_special_files(
        tmp_path: Path, make: Callable[[Path, Path], None], message: str) -> None:
    project = copy_example("hello", tmp_path)
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the sdist")
    make(project, outside)
    dist = tmp_path / "dist"
    dist.mkdir()
    proc = subprocess.run([sys.executable, "-c",
                           "import sys; from ukl_build.build_meta import build_sdist; "
                           "build_sdist(sys.argv[1])", str(dist)],
                          cwd=project, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr
    assert message.format(outside=outside) in proc.stderr
    assert "Traceback" not in proc.stderr and list(dist.iterdir()) == []  # nothing left


def test_sdist_keeps_links_inside_the_project_as_links(tmp_path: Path) -> None:
    project = copy_example("hello", tmp_path)
    (project / "src" / "alias.c").symlink_to("hello.c")
    (project / "docs").mkdir()
    (project / "docs" / "src").symlink_to(project / "src")  # absolute, but inside
    sdist = tmp_path / write_sdist(load_settings(project), tmp_path, 315532800)
    with tarfile.open(sdist) as tar:
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
    assert links == {"ukl_hello-0.1.0/src/alias.c": "hello.c",
                     "ukl_hello-0.1.0/docs/src": "../src"}
