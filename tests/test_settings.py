from pathlib import Path

import pytest

from ukl_build.errors import ConfigError
from ukl_build.settings import load_settings, settings_schema_markdown

BASE = """
[project]
name = "demo-app"
version = "1.0"
[tool.ukl-build]
sources = ["main.c"]
"""


def project(tmp_path: Path, extra: str = "", base: str = BASE) -> Path:
    (tmp_path / "pyproject.toml").write_text(base + extra)
    return tmp_path


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(project(tmp_path))
    assert s.mode == "ukl"
    assert s.kernel.kind == "debian" and s.kernel.version == "6.1"
    assert s.recipes == ["microvm"] and s.formats == ["bzimage"]
    assert s.dist_name == "demo_app"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(project(tmp_path, "colour = 'blue'\n"))
    assert "pyproject.toml" in str(e.value) and "'colour'" in str(e.value)


def test_unknown_nested_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[tool.ukl-build.kernel\] unknown key 'shasum'"):
        load_settings(project(tmp_path, "[tool.ukl-build.kernel]\nshasum = 'x'\n"))


def test_wrong_type_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[tool.ukl-build\] args: expected a list of strings"):
        load_settings(project(tmp_path, "args = 'x'\n"))


def test_bad_choice(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mode: must be one of"):
        load_settings(project(tmp_path, "mode = 'kernel'\n"))


def test_url_needs_sha256(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sha256: required with url"):
        load_settings(project(tmp_path, "[tool.ukl-build.kernel]\nurl = 'http://x/linux.tar.xz'\n"))


def test_exactly_one_app_build(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of sources, make, cmake"):
        load_settings(project(tmp_path, "make = { output = 'x' }\n"))


def test_config_settings_override(tmp_path: Path) -> None:
    extra = "[tool.ukl-build.kernel]\npath = '../linux.tar.xz'\n"
    s = load_settings(project(tmp_path, extra), {
        "mode": "user",
        "recipes": "net;virtio-net;microvm",
        "kconfig.HZ_100": "y",
        "kernel.git.url": "/srv/linux.git",
        "kernel.git.rev": "v6.1",
        "run.smp": "2",
    })
    assert s.recipes == ["net", "virtio-net", "microvm"]
    assert s.kconfig == {"HZ_100": "y"}
    # a -C kernel source replaces the project's choice instead of clashing with it
    assert s.kernel.kind == "git" and s.kernel.path is None
    assert s.kernel.git is not None and s.kernel.git.rev == "v6.1"
    assert s.run.smp == 2


def test_modules_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="modules are not supported"):
        load_settings(project(tmp_path, "kconfig = { E1000 = 'm' }\n"))


def test_schema_lists_every_table() -> None:
    md = settings_schema_markdown()
    for table in ("[tool.ukl-build]", "[tool.ukl-build.kernel]", "[tool.ukl-build.kernel.git]",
                  "[tool.ukl-build.run]", "[tool.ukl-build.cmake]"):
        assert f"`{table}`" in md


def test_configuration_reference_is_current() -> None:
    doc = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    assert doc.read_text() == settings_schema_markdown() + "\n", "run: make docs"
