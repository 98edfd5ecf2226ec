"""[tool.ukl-build.files]: project files in the image's initramfs, checked and expanded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ukl_build.errors import ConfigError
from ukl_build.files import file_sha256
from ukl_build.imagefiles import image_files, initramfs_entries
from ukl_build.kbuild import payload_for
from ukl_build.settings import load_settings

BASE = '[project]\nname = "x"\nversion = "1"\n[tool.ukl-build]\nsources = ["a.c"]\n'


def settings(project: Path, files: str, **over: str):  # type: ignore[no-untyped-def]
    (project / "pyproject.toml").write_text(BASE + files)
    return load_settings(project, over or None)


def test_files_and_directories_become_initramfs_entries(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.conf").write_text("port 80\n")
    site = tmp_path / "site"
    (site / "css").mkdir(parents=True)
    (site / "index.html").write_text("<p>hi</p>\n")
    (site / "css" / "a.css").write_text("p {}\n")
    os.chmod(site / "index.html", 0o640)
    s = settings(tmp_path, '[tool.ukl-build.files."/etc/app/app.conf"]\npath = "conf/app.conf"\n'
                           'mode = "0600"\n'
                           '[tool.ukl-build.files."/srv/www"]\npath = "site"\n')
    files = image_files(s)
    payload, lines = initramfs_entries(files)
    assert lines == [
        "dir /etc/app 0755 0 0",  # the parent first; /etc is the initramfs's own
        "file /etc/app/app.conf ukl-root/files/1 0600 0 0",
        "dir /srv 0755 0 0",
        "dir /srv/www 0755 0 0",
        "dir /srv/www/css 0755 0 0",
        "file /srv/www/index.html ukl-root/files/5 0640 0 0",  # the source's own mode
        "file /srv/www/css/a.css ukl-root/files/6 0644 0 0",
    ]
    assert payload["ukl-root/files/5"] == (site / "index.html").resolve()
    records = [f.record() for f in files if f.source is not None]
    assert records[0] == {"path": "/etc/app/app.conf", "source": "conf/app.conf",
                          "sha256": file_sha256(tmp_path / "conf" / "app.conf"), "mode": "0600"}


def test_the_files_are_in_the_payload_and_its_key(tmp_path: Path) -> None:
    from ukl_build.appbuild import AppBinary

    (tmp_path / "greeting").write_text("hello\n")
    s = settings(tmp_path, '[tool.ukl-build.files."/etc/greeting"]\npath = "greeting"\n')
    app = AppBinary(tmp_path / "greeting", "0" * 64, "nolibc", "gcc", "ukl", b"m", None, None, ())
    payload = payload_for(app, image_files(s))
    assert payload.files["ukl-root/files/0"] == (tmp_path / "greeting").resolve()
    assert "file /etc/greeting ukl-root/files/0 0644 0 0\n" in payload.initramfs
    assert "/etc/greeting" not in payload_for(app).initramfs


@pytest.mark.parametrize(("entry", "message"), [
    ('"etc/x"]\npath = "a"', "must be absolute"),
    ('"/etc/a b"]\npath = "a"', "without white space"),
    ('"/etc/../x"]\npath = "a"', "not a plain absolute path"),
    ('"/init"]\npath = "a"', "where ukl-build puts its own"),
    ('"/etc/passwd"]\npath = "a"', "where ukl-build puts its own"),
    ('"/dev/x"]\npath = "a"', "where ukl-build puts its own"),
    ('"/x"]\npath = "missing"', "does not exist"),
    ('"/x"]\npath = "../outside"', "outside the project"),
    ('"/x"]\npath = "a"\nmode = "rw"', "octal permissions"),
])
def test_bad_entries_are_refused_by_key(tmp_path: Path, entry: str, message: str) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "a").write_text("a\n")
    (tmp_path / "outside").write_text("no\n")
    s = settings(project, f"[tool.ukl-build.files.{entry}\n")
    with pytest.raises(ConfigError, match=message) as e:
        image_files(s)
    assert "pyproject.toml: [tool.ukl-build.files." in str(e.value) or "files:" in str(e.value)


def test_a_directory_may_not_shadow_a_file_entry(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("1\n")
    (tmp_path / "x").write_text("2\n")
    s = settings(tmp_path, '[tool.ukl-build.files."/srv"]\npath = "d"\n'
                           '[tool.ukl-build.files."/srv/x"]\npath = "x"\n')
    with pytest.raises(ConfigError, match="/srv/x is named twice"):
        image_files(s)


def test_an_entry_given_with_c_is_named_as_given(tmp_path: Path) -> None:
    # -C keys are compared in TOML spelling, but a file's path keeps its underscores
    s = settings(tmp_path, "", **{"files./etc/my_app.path": "missing"})
    with pytest.raises(ConfigError, match=r"^config setting -C files\./etc/my_app\.path path: "
                                          r".*missing does not exist"):
        image_files(s)
