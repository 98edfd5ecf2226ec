"""The kernel build's compiler setup (ccache, remote storage, distcc) and its stats line."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ukl_build.compilers import (
    KERNEL_CC,
    CacheStats,
    _redact,
    _slots,
    kernel_cc,
    kernel_compiler,
    read_distcc,
    read_stats,
    stats_line,
)
from ukl_build.errors import ConfigError
from ukl_build.settings import load_settings

BASE = '[project]\nname = "x"\nversion = "1"\n[tool.ukl-build]\nsources = ["a.c"]\n'


def settings(tmp_path: Path, cs: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    (tmp_path / "pyproject.toml").write_text(BASE)
    return load_settings(tmp_path, cs)


def test_stats_log_counts_this_builds_compiles(tmp_path: Path) -> None:
    log = tmp_path / "stats.log"
    log.write_text("# a.c\ncache_miss\ndirect_cache_miss\nlocal_storage_miss\n"
                   "# b.c\ndirect_cache_hit\nlocal_storage_hit\n"
                   "# c.c\nremote_storage_hit\ndirect_cache_hit\n"
                   "# d.c\nremote_storage_hit\n"
                   # a result found corrupted: a storage hit that became a miss
                   "# e.c\nlocal_storage_hit\nbad_input_file\ncache_miss\n")
    assert read_stats(log) == CacheStats(local_hits=1, remote_hits=2, misses=2)
    assert read_stats(tmp_path / "none") == CacheStats(0, 0, 0)


@pytest.mark.skipif(shutil.which("ccache") is None, reason="needs ccache")
def test_settings_reach_ccache_and_override_the_environment(tmp_path: Path) -> None:
    s = settings(tmp_path, {"ccache.remote-storage": "redis://127.0.0.1:6379|read-only",
                            "ccache.max-size": "1G", "jobs": "3"})
    c = kernel_compiler(s, {"CCACHE_REMOTE_STORAGE": "http://elsewhere/"}, tmp_path,
                        tmp_path / "bin")
    assert c.env["CCACHE_REMOTE_STORAGE"] == "redis://127.0.0.1:6379|read-only"
    assert c.env["CCACHE_MAXSIZE"] == "1G" and c.jobs == 3
    script, ccache, gcc = c.cc.split()
    assert script.startswith(str(tmp_path / "bin/kernel-cc-")) and ccache.endswith("/ccache")
    assert gcc.endswith("/gcc") and c.stats_log == tmp_path / "ccache-stats.log"
    assert "remote redis://127.0.0.1:6379|read-only" in c.describe()
    # without the setting, ccache's own variable is honoured
    plain = kernel_compiler(settings(tmp_path), {"CCACHE_REMOTE_STORAGE": "http://e/"}, tmp_path,
                            tmp_path)
    assert plain.env["CCACHE_REMOTE_STORAGE"] == "http://e/"


def test_distcc_hosts_need_distcc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ukl_build.compilers.shutil.which",
                        lambda name: None if name == "distcc" else f"/usr/bin/{name}")
    with pytest.raises(ConfigError, match=r"-C distcc.hosts: distcc is not installed"):
        kernel_compiler(settings(tmp_path, {"distcc.hosts": "localhost/4"}), {}, tmp_path, tmp_path)
    monkeypatch.setattr("ukl_build.compilers.shutil.which", lambda name: f"/usr/bin/{name}")
    c = kernel_compiler(settings(tmp_path, {"distcc.hosts": "localhost/4;10.0.0.5/8,lzo"}), {},
                        tmp_path, tmp_path)
    assert c.env["CCACHE_PREFIX"] == "/usr/bin/distcc" and c.distcc
    assert c.env["DISTCC_HOSTS"] == "localhost/4 10.0.0.5/8,lzo" and c.jobs == 12
    assert c.distcc_log == tmp_path / "distcc.log" and c.env["DISTCC_LOG"] == str(c.distcc_log)
    assert c.stats_log is not None
    c.stats_log.write_text("# a.c\nlocal_storage_hit\n# b.c\nremote_storage_hit\n"
                           "# c.c\ncache_miss\n# d.c\ncache_miss\n# e.c\ncache_miss\n")
    # What distcc's client logs (trimmed): a job per "compile ... on HOST completed ok";
    # preprocessing here and a fallback to compiling here are not jobs it ran.
    c.distcc_log.write_text(
        "distcc[11] cpp a.c on localhost completed ok\n"
        "distcc[11] compile a.c on 10.0.0.5/8,lzo completed ok\n"
        "distcc[12] compile b.c on 10.0.0.5/8,lzo completed ok\n"
        "distcc[13] compile c.c on localhost completed ok\n"
        "distcc[15] compile (null) on localhost completed ok\n"
        "distcc[14] (dcc_build_somewhere) Warning: failed to distribute d.c to 10.0.0.5/8,lzo, "
        "running locally instead\n"
        "distcc[14] compile d.c on localhost completed ok\n")
    assert read_distcc(c.distcc_log) == {"10.0.0.5/8,lzo": 2, "localhost": 1, "(here)": 1,
                                         "(fell back)": 1}
    assert stats_line(c) == ("compiler cache: 5 compiles: 1 local hits, 1 remote hits, 3 misses; "
                             "distcc sent 3 jobs (10.0.0.5/8,lzo 2, localhost 1), ran 1 here, "
                             "1 here after failing to distribute them")
    c.reset_logs()  # a new build counts its own
    assert not c.stats_log.exists() and not c.distcc_log.exists()


def test_slots_and_redaction() -> None:
    assert _slots("localhost/2 a/8,lzo b") == 12
    assert _redact("redis://:s3cret@host:6379") == "redis://:***@host:6379"


def test_verify_compiles_everything_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """shared=False (verify's builds): no compiler cache, no remote store and no distcc,
    from the settings or from the environment."""
    monkeypatch.setattr("ukl_build.compilers.shutil.which", lambda name: f"/usr/bin/{name}")
    s = settings(tmp_path, {"ccache.remote-storage": "redis://h", "ccache.remote-only": "true",
                            "distcc.hosts": "h/8"})
    env = {"CCACHE_REMOTE_STORAGE": "http://e/", "DISTCC_HOSTS": "e/4",
           "CCACHE_PREFIX": "distcc", "CCACHE_REMOTE_ONLY": "1", "PATH": "/usr/bin"}
    c = kernel_compiler(s, env, tmp_path, tmp_path / "bin", shared=False)
    assert c.env["CCACHE_REMOTE_STORAGE"] == "" and not c.distcc
    assert not {"DISTCC_HOSTS", "CCACHE_PREFIX", "CCACHE_REMOTE_ONLY"} & c.env.keys()
    assert c.cc == "/usr/bin/gcc" and c.stats_log is None
    assert c.describe() == f"-j{c.jobs}, no compiler cache"


def test_kernel_cc_keeps_incbin_sources_away_from_ccache(tmp_path: Path) -> None:
    """The compiler script: ccache in depend mode for every compile, except those of a
    source that names .incbin (depend mode cannot see the file it pulls in)."""
    log = tmp_path / "calls"
    for name in ("ccache", "gcc"):
        fake = tmp_path / name
        fake.write_text(f'#!/bin/sh\necho "{name} depend=${{CCACHE_DEPEND:-}} $*" >> {log}\n')
        fake.chmod(0o755)
    (tmp_path / "initramfs_data.S").write_text('.incbin "usr/initramfs_inc_data"\n')
    (tmp_path / "configs.c").write_text('asm(".incbin \\"kernel/config_data.gz\\"");\n')
    (tmp_path / "main.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / "head.S").write_text("nop\n")
    cc = kernel_cc(tmp_path / "bin")
    assert cc == kernel_cc(tmp_path / "bin")  # the same script, the same path
    for args in (["-c", "-o", "a.o", "initramfs_data.S"], ["-Wp,-MMD,x.d", "-c", "configs.c"],
                 ["-Wp,-MMD,x.d", "-c", "main.c"], ["-c", "head.S"], ["--version"],
                 ["-c", "-x", "c", "/dev/null"]):
        subprocess.run([str(cc), str(tmp_path / "ccache"), str(tmp_path / "gcc"), *args],
                       cwd=tmp_path, check=True)
    assert log.read_text().splitlines() == [
        "gcc depend= -c -o a.o initramfs_data.S",
        "gcc depend= -Wp,-MMD,x.d -c configs.c",
        f"ccache depend=1 {tmp_path}/gcc -Wp,-MMD,x.d -c main.c",
        f"ccache depend=1 {tmp_path}/gcc -c head.S",
        f"ccache depend=1 {tmp_path}/gcc --version",
        f"ccache depend=1 {tmp_path}/gcc -c -x c /dev/null"]
    # A damaged script is found and written again, executable.
    cc.write_text("#!/bin/sh\nexit 1\n")
    assert kernel_cc(tmp_path / "bin") == cc and cc.read_text() == KERNEL_CC
    assert os.access(cc, os.X_OK)
