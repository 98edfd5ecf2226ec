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
    assert s.project.dist_name == "demo_app"


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


# --- errors name their real source; everything is checked when settings load


def test_cli_override_errors_name_the_config_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(project(tmp_path), {"mode": "kernel"})
    assert str(e.value).startswith("config setting -C mode: must be one of")
    assert "pyproject.toml" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^config setting -C run.smp: expected an integer"):
        load_settings(project(tmp_path), {"run.smp": "two"})
    with pytest.raises(ConfigError, match=r"^config setting -C colour: unknown key 'colour'"):
        load_settings(project(tmp_path), {"colour": "blue"})
    # a kernel option keeps its spelling (-C keys become TOML keys, HZ_100 -> HZ-100)
    s = load_settings(project(tmp_path), {"kconfig.HZ_100": "y"})
    assert s.origin("kconfig.HZ_100") == "config setting -C kconfig.HZ_100"
    assert s.origin("kconfig.HZ_250").endswith("pyproject.toml: [tool.ukl-build.kconfig] HZ_250")
    # the same mistake in the file names the file and the table
    with pytest.raises(ConfigError, match=r"pyproject.toml: \[tool.ukl-build\] mode: must be one of"):
        load_settings(project(tmp_path, "mode = 'kernel'\n"))


@pytest.mark.parametrize(("extra", "message"), [
    ("[tool.ukl-build.run]\nmemory = 'lots'\n", r"run\] memory: expected a size such as 256M"),
    ("[tool.ukl-build.run]\nmemory = '0M'\n", r"run\] memory: expected a size"),
    ("[tool.ukl-build.run]\nsmp = 0\n", r"run\] smp: expected at least 1"),
    ("[tool.ukl-build.run]\nforward = ['8080']\n", r"run\] forward: '8080': expected HOST:GUEST"),
    ("[tool.ukl-build.run]\nforward = ['70000:80']\n", r"run\] forward: '70000:80': ports are 1 to 65535"),
    ("[tool.ukl-build.kernel.git]\nurl = '/srv/linux.git'\n",
     r"\[tool.ukl-build.kernel.git\] required key 'rev' missing"),
    ("args = ['x=\"y z\"']\n", r"\] args: argument 1 'x=\"y z\"' cannot be passed on a kernel command line"),
    ("args = ['--']\n", r"argument 1 '--' cannot be passed.*stops passing arguments"),
    (f"args = {['a'] * 33!r}\n", r"33 arguments, but the kernel passes at most 32"),
    (f"cmdline = '{'x' * 2100}'\n", r"kernel command line is \d+ bytes; the kernel keeps only 2047"),
    ("[tool.ukl-build.kconfig]\nINITRAMFS_COMPRESSION_GZIP = 'y'\n", r"initramfs stays uncompressed"),
])
def test_checked_at_configuration_time(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(project(tmp_path, extra))


def test_app_sources_must_be_inside_the_project(tmp_path: Path) -> None:
    proj = tmp_path / "p"
    proj.mkdir()
    base = BASE.replace('sources = ["main.c"]', 'sources = ["../outside.c"]')
    with pytest.raises(ConfigError, match=r"sources: '../outside.c' is outside the project"):
        load_settings(project(proj, base=base))
    base = BASE.replace('sources = ["main.c"]', 'make = { dir = "/usr/src" }')
    with pytest.raises(ConfigError, match=r"make\] dir: '/usr/src' is outside the project"):
        load_settings(project(proj, base=base))
    with pytest.raises(ConfigError, match=r"-C recipes: '../x.config' is outside the project"):
        load_settings(project(proj), {"recipes": "microvm;../x.config"})


@pytest.mark.parametrize("name", ["hello world!", "-dash", "trailing.", "1app"])
def test_project_name_must_be_a_distribution_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"\[project\] name: "):
        load_settings(project(tmp_path, base=BASE.replace("demo-app", name)))


def test_run_defaults_come_from_runoptions(tmp_path: Path) -> None:
    from ukl_build.launcher.options import RunOptions

    s = load_settings(project(tmp_path))
    run = s.run
    base = RunOptions()
    assert (s.run_machine, run.memory, run.smp, run.accel) == (base.machine, base.memory,
                                                               base.smp, base.accel)


def test_uefi_formats_boot_on_q35_and_sign_needs_them(tmp_path: Path) -> None:
    s = load_settings(project(tmp_path), {"formats": "efi;disk"})
    assert s.firmware_boot and s.run_machine == "q35"
    assert load_settings(project(tmp_path), {"formats": "pvh"}).run_machine == "microvm"
    with pytest.raises(ConfigError, match=r"-C run.machine: the efi and disk formats boot "
                                          r"through UEFI firmware"):
        load_settings(project(tmp_path), {"formats": "disk", "run.machine": "microvm"})
    with pytest.raises(ConfigError, match=r"-C sign.cert: signing applies to the efi and disk"):
        load_settings(project(tmp_path), {"sign.cert": "c.pem", "sign.key": "k.pem"})
    with pytest.raises(ConfigError, match=r"sign.key: set exactly one of key, key-env \(got key, "
                                          r"key_env\)"):
        load_settings(project(tmp_path), {"formats": "efi", "sign.cert": "c.pem",
                                          "sign.key": "k.pem", "sign.key-env": "K"})
    with pytest.raises(ConfigError, match=r"\[tool.ukl-build.sign\] required key 'cert'"):
        load_settings(project(tmp_path, "formats = ['disk']\n[tool.ukl-build.sign]\nkey = 'k'\n"))
    with pytest.raises(ConfigError, match=r"kconfig\] CMDLINE: with the efi or disk format"):
        load_settings(project(tmp_path, "formats = ['efi']\n[tool.ukl-build.kconfig]\n"
                                        "CMDLINE = 'x'\n"))


def test_schema_documents_kernel_version() -> None:
    assert "| `version` | `'6.1'` |" in settings_schema_markdown()


def test_kernel_version_needs_a_patch_series(tmp_path: Path) -> None:
    assert load_settings(project(tmp_path), {"kernel.version": "6.12"}).kernel.version == "6.12"
    with pytest.raises(ConfigError, match=r"-C kernel.version: no UKL patch series for Linux 6.6") \
            as e:
        load_settings(project(tmp_path), {"kernel.version": "6.6"})
    assert "6.1, 6.12" in str(e.value.hint)


def test_app_source_needs_exactly_one_kind_and_a_digest_for_urls(tmp_path: Path) -> None:
    base = BASE.replace('sources = ["main.c"]', "[tool.ukl-build.make]\nsource = {}")
    with pytest.raises(ConfigError, match=r"make\] source: set exactly one of url, path, git, debian"):
        load_settings(project(tmp_path, base=base))
    base = BASE.replace('sources = ["main.c"]',
                        "[tool.ukl-build.make]\nsource = { url = 'http://127.0.0.1/x.tar.gz' }")
    with pytest.raises(ConfigError, match=r"sha256: required with url"):
        load_settings(project(tmp_path, base=base))
    base = BASE.replace('sources = ["main.c"]',
                        "[tool.ukl-build.make]\ndir = '../x'\nsource = { debian = 'redis' }")
    with pytest.raises(ConfigError, match=r"'../x' leaves the fetched source tree"):
        load_settings(project(tmp_path, base=base))
    s = load_settings(project(tmp_path, base=BASE.replace(
        'sources = ["main.c"]', "[tool.ukl-build.make]\ndir = 'src'\nsource = { debian = 'redis' }")))
    assert s.make is not None and s.make.source is not None and s.make.source.debian == "redis"


def test_glibc_is_user_mode_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"-C libc: mode 'ukl' needs 'nolibc' or 'musl'"):
        load_settings(project(tmp_path), {"libc": "glibc"})
    assert load_settings(project(tmp_path), {"libc": "musl"}).mode == "ukl"
    s = load_settings(project(tmp_path), {"libc": "musl", "mode": "user"})
    assert s.musl.debian == "musl"  # Debian's source package unless [tool.ukl-build.musl] says


def test_a_table_made_by_config_settings_is_blamed_on_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config setting -C kernel.git.url: \[tool.ukl-build"
                                          r".kernel.git\] required key 'rev' missing"):
        load_settings(project(tmp_path), {"kernel.git.url": "/srv/linux.git"})


MAKE_BASE = """
[project]
name = "demo-app"
version = "1.0"
[tool.ukl-build]
libc = "musl"
[tool.ukl-build.make]
output = "server"
"""


def test_deps_are_tables_in_order(tmp_path: Path) -> None:
    s = load_settings(project(tmp_path, """
configure = ["--with-b={deps.b}", "--with-a={deps.a}"]
[tool.ukl-build.deps.b]
source = { debian = "b" }
[tool.ukl-build.deps.a]
source = { url = "http://127.0.0.1/a.tar.gz", sha256 = "%s" }
configure = ["--with-b={deps.b}"]
""" % ("0" * 64), base=MAKE_BASE))
    assert list(s.deps) == ["b", "a"]
    assert s.deps["a"].source.url == "http://127.0.0.1/a.tar.gz"
    assert s.make is not None and s.make.configure == ["--with-b={deps.b}", "--with-a={deps.a}"]


@pytest.mark.parametrize(("extra", "message"), [
    ("[tool.ukl-build.deps.ev]\nconfigure = []\n",
     r"\[tool.ukl-build.deps.ev\] required key 'source' missing"),
    ("[tool.ukl-build.deps.ev]\nsource = { debian = 'libevent', path = 'x' }\n",
     r"\[tool.ukl-build.deps.ev\] source: set exactly one of"),
    ("[tool.ukl-build.deps.ev]\nsource = { url = 'http://127.0.0.1/x.tgz' }\n",
     r"\[tool.ukl-build.deps.ev.source\] sha256: required with url"),
    ("configure = ['--with-x={deps.x}']\n",
     r"\[tool.ukl-build.make\] configure: '--with-x=\{deps.x\}' names \{deps.x\}, which is not a "
     r"dependency built before it"),
    ("[tool.ukl-build.deps.a]\nsource = { debian = 'a' }\nconfigure = ['{deps.b}']\n"
     "[tool.ukl-build.deps.b]\nsource = { debian = 'b' }\n",
     r"deps.a\] configure: '\{deps.b\}' names \{deps.b\}"),
])
def test_deps_errors_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    # The [tool.ukl-build.make] table is last in MAKE_BASE: keys before a deps table land in it.
    with pytest.raises(ConfigError, match=message):
        load_settings(project(tmp_path, extra, base=MAKE_BASE))


def test_deps_need_a_libc_that_configure_can_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[tool.ukl-build.deps\] ev: .*libc 'nolibc' cannot"):
        load_settings(project(tmp_path, "[tool.ukl-build.deps.ev]\nsource = { debian = 'x' }\n",
                              base=MAKE_BASE.replace('libc = "musl"', 'libc = "nolibc"')))
    with pytest.raises(ConfigError, match=r"config setting -C make.configure: .*libc 'nolibc'"):
        load_settings(project(tmp_path, base=MAKE_BASE.replace('libc = "musl"', "")),
                      {"make.configure": "--x"})


def test_every_example_and_test_app_names_one_kernel_configuration() -> None:
    """The suite's budget rests on it (docs/testing.md): every app the suite builds in
    its shared cache names the same recipes and no kconfig options, so each mode is one
    kernel that the apps only relink.  A different list is a new configuration: several
    minutes of every run, to be argued for there."""
    import tomllib

    from ukl_build.kconfig import recipes_for

    from conftest import EXAMPLE_RECIPES, EXAMPLES, REPO, TEST_APPS

    recipes = tomllib.loads(EXAMPLE_RECIPES)["recipes"]  # what the tests' own projects name
    assert recipes == ["server", "net", "virtio-net", "storage", "microvm"]
    apps = [*EXAMPLES.glob("*/pyproject.toml"), *TEST_APPS.glob("*/pyproject.toml"),
            *REPO.glob("benchmarks/apps/*/pyproject.toml")]
    assert len(apps) >= 9
    for pyproject in apps:
        modes = 0
        for mode in ("ukl", "user"):
            try:
                s = load_settings(pyproject.parent, {"mode": mode})
            except ConfigError:  # e.g. a glibc app: user mode only
                continue
            modes += 1
            assert s.recipes == recipes, pyproject
            assert not s.kconfig and s.hardened, pyproject
            assert recipes_for(s) == recipes_for(load_settings(EXAMPLES / "httpd",
                                                               {"mode": mode})), pyproject
        assert modes, pyproject
