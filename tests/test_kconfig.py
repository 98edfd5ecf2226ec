from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from ukl_build.cache import Cache
from ukl_build.context import BuildContext
from ukl_build.errors import BuildError, ConfigError
from ukl_build.kconfig import (
    ConfigRequest,
    configure,
    merge_into,
    parse_fragment,
    read_config,
    requested_options,
    resolve_recipes,
)
from ukl_build.progress import Reporter


def test_parse_fragment() -> None:
    opts, req = parse_fragment("# requires: net\nCONFIG_A=y\n# CONFIG_B is not set\n"
                               'CONFIG_C="x y"\n# comment\n', "frag")
    assert req == ["net"]
    assert [(o.name, o.value) for o in opts] == [("A", "y"), ("B", "n"), ("C", '"x y"')]


def test_parse_fragment_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match="frag:2: not a kernel config line"):
        parse_fragment("CONFIG_A=y\nA=y\n", "frag")


def test_recipes_order_and_requires(tmp_path: Path) -> None:
    names = [n for n, _ in resolve_recipes(["virtio-net", "microvm"], tmp_path)]
    assert names == ["base", "net", "virtio-net", "pvh", "microvm"]


def test_series_overlay_follows_its_recipe(tmp_path: Path) -> None:
    """recipes/linux-6.12/hardened.config comes right after hardened on 6.12, and wins."""
    on_612 = resolve_recipes(["hardened", "microvm"], tmp_path, series="6.12")
    assert [n for n, _ in on_612] == ["base", "hardened", "linux-6.12/hardened", "pvh", "microvm"]
    got = {o.name: o for o in requested_options(on_612, [])}
    assert got["SLUB_TINY"].value == "n" and got["SLUB_TINY"].origin == "recipe linux-6.12/hardened"
    assert got["DEBUG_CREDENTIALS"].value == "n"
    on_61 = [n for n, _ in resolve_recipes(["hardened"], tmp_path, series="6.1")]
    assert on_61 == ["base", "hardened"]


def test_project_recipe_file_has_no_overlay(tmp_path: Path) -> None:
    (tmp_path / "hardened.config").write_text("CONFIG_HZ_100=y\n")
    names = [n for n, _ in resolve_recipes(["hardened.config"], tmp_path, series="6.12")]
    assert names == ["base", "hardened.config"]


def test_unknown_recipe_lists_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown recipe 'nett'") as e:
        resolve_recipes(["nett"], tmp_path)
    assert "microvm" in str(e.value)


def test_project_recipe_file(tmp_path: Path) -> None:
    (tmp_path / "extra.config").write_text("CONFIG_HZ_100=y\n")
    opts = requested_options(resolve_recipes(["extra.config"], tmp_path), [("HZ", "100")])
    got = {o.name: o for o in opts}
    assert got["HZ_100"].value == "y" and got["HZ"].origin == "[tool.ukl-build] kconfig.HZ"


def test_app_options_win_and_strings_are_quoted(tmp_path: Path) -> None:
    opts = requested_options(resolve_recipes([], tmp_path),
                             [("PANIC_TIMEOUT", "5"), ("CONFIG_DEFAULT_HOSTNAME", "ukl")])
    got = {o.name: o.value for o in opts}
    assert got["PANIC_TIMEOUT"] == "5" and got["DEFAULT_HOSTNAME"] == '"ukl"'


def test_merge_into(tmp_path: Path) -> None:
    cfg = tmp_path / ".config"
    cfg.write_text("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=1\n")
    opts, _ = parse_fragment("# CONFIG_A is not set\nCONFIG_B=y\n", "f")
    merge_into(cfg, opts)
    assert read_config(cfg) == {"B": "y", "C": "1"}


@pytest.mark.kernel
def test_dropped_option_reported_by_name(patched_tree, cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # VIRTIO_NET needs NET and a virtio transport: with neither recipe it cannot survive.
    with Reporter(None) as r, pytest.raises(BuildError) as e:
        configure(patched_tree, ConfigRequest([], [("VIRTIO_NET", "y"), ("NR_CPUS", "4")],
                                              tmp_path), BuildContext(cache, r, dict(os.environ)))
    msg = str(e.value)
    assert "2 requested option(s) did not survive" in msg
    assert "CONFIG_VIRTIO_NET=y (from [tool.ukl-build] kconfig.VIRTIO_NET) became not set" in msg
    assert "depends on VIRTIO" in msg
    assert "CONFIG_NR_CPUS=4" in msg and "range" in msg
    assert not [p for p in (cache.root / "kconfig").iterdir() if p.name.startswith(".tmp")]


@pytest.mark.kernel
def test_bad_values_and_unknown_options_refused_before_make(patched_tree, cache,  # type: ignore[no-untyped-def]
                                                            tmp_path: Path) -> None:
    with Reporter(None) as r, pytest.raises(ConfigError) as e:
        configure(patched_tree, ConfigRequest([], [("HZ_100", "abc"), ("PANIC_TIMEOUT", "soon"),
                                                   ("NO_SUCH_OPTION_X", "y"),
                                                   ("DEFAULT_HOSTNAME", "fine")], tmp_path),
                  BuildContext(cache, r, dict(os.environ)))
    msg = str(e.value)
    assert "kconfig.HZ_100 = \"abc\": a bool option takes y or n" in msg
    assert "kconfig.PANIC_TIMEOUT = \"soon\": an int option takes a decimal integer" in msg
    assert "kconfig.NO_SUCH_OPTION_X = y: no such option in this kernel" in msg
    assert "DEFAULT_HOSTNAME" not in msg and "depends on" not in msg


def test_a_resolved_configuration_belongs_to_its_compiler(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """.config records the compiler's version (CONFIG_CC_VERSION_TEXT and what tests it):
    the same request with another gcc on PATH (here one that only says another version)
    is another cache entry, resolved with it; the same gcc finds the same entry."""
    keys: list[str] = []

    def entry(self: Cache, kind: str, key: str, make: object, **kw: object) -> Path:
        keys.append(key)
        (tmp_path / key).mkdir(exist_ok=True)
        (tmp_path / key / ".config").write_text("CONFIG_X=y\n")
        return tmp_path / key

    monkeypatch.setattr(Cache, "entry", entry)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "gcc").write_text('#!/bin/sh\necho "gcc (ukl-build test) 99.0.0"\n')
    (fake / "gcc").chmod(0o755)
    tree = SimpleNamespace(key="tree")
    request = ConfigRequest(["microvm"], [], tmp_path)
    cache = Cache(tmp_path / "cache")
    for env in (dict(os.environ), {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},
                dict(os.environ)):
        with Reporter(None) as r:
            configure(tree, request, BuildContext(cache, r, env))  # type: ignore[arg-type]
    assert keys[0] != keys[1] and keys[0] == keys[2], keys
