"""Secure by default (docs/security.md): the hardened recipe and the hardened app.

The list of kernel protections is security/protections.txt; every example
app's resolved .config is checked against it in both modes.  The protections
are then shown firing, in both modes: a stack smash in the app, writes to its
text and const data, KASLR moving ``main`` between boots, the kernel's own
W+X check.  The images are the probe builds test_ukl.py uses (one cache).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from ukl_build.context import BuildContext
from ukl_build.errors import ConfigError
from ukl_build.kconfig import (
    ConfigRequest,
    configure,
    parse_fragment,
    read_config,
    recipes_for,
)
from ukl_build.progress import Reporter
from ukl_build.settings import load_settings
from ukl_build.toolchain import app_hardening

from conftest import EXAMPLES, REPO, Builds, copy_example
from conftest import run_image as run

PROTECTIONS = REPO / "security" / "protections.txt"
RECIPES = REPO / "recipes"
MODES = ("both", "ukl", "user", "net")


@dataclass(frozen=True)
class Protection:
    modes: str  # both, ukl, user, or net (apps with CONFIG_NET)
    name: str  # without CONFIG_
    value: str
    why: str


def load_protections(path: Path = PROTECTIONS) -> list[Protection]:
    out = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip() or raw.startswith("#"):
            continue
        m = re.match(r"^(\w+)\s+([A-Z0-9_]+)=(\S+)\s+(\S.*)$", raw)
        assert m and m.group(1) in MODES, f"{path}:{lineno}: not 'MODES NAME=VALUE why': {raw!r}"
        out.append(Protection(m.group(1), m.group(2), m.group(3), m.group(4)))
    return out


def missing(config: dict[str, str], mode: str, protections: list[Protection]) -> list[str]:
    """The protections ``config`` (read_config's dict) lacks for an app of ``mode``."""
    lost = []
    for p in protections:
        applies = (p.modes in ("both", mode)
                   or (p.modes == "net" and config.get("NET") == "y"))
        if applies and config.get(p.name, "n") != p.value:
            lost.append(f"CONFIG_{p.name}={p.value} ({p.why}): is {config.get(p.name, 'n')}")
    return lost


# -- the list and the recipe (no kernel) ---------------------------------------------------

def test_the_list_and_the_recipes_agree() -> None:
    protections = load_protections()
    assert len({p.name for p in protections}) == len(protections), "an option listed twice"
    hardened = {o.name: o.value for o in
                parse_fragment((RECIPES / "hardened.config").read_text(), "hardened")[0]}
    net = {o.name: o.value for o in parse_fragment((RECIPES / "net.config").read_text(), "n")[0]}
    # User mode adds the mitigations recipe by default (and only user mode).
    user = {**hardened, **{o.name: o.value for o in parse_fragment(
        (RECIPES / "mitigations.config").read_text(), "mitigations")[0]}}
    for p in protections:
        source = net if p.modes == "net" else user if p.modes == "user" else hardened
        assert source.get(p.name) == p.value, f"{p.name}: listed, not requested by the recipe"
    # What the ukl recipe takes back is a user-mode-only protection.
    ukl = {o.name for o in parse_fragment((RECIPES / "ukl.config").read_text(), "ukl")[0]}
    for p in protections:
        if p.name in ukl:
            assert p.modes == "user", p


def test_missing_names_each_lost_protection() -> None:
    protections = [Protection("both", "STACKPROTECTOR", "y", "canaries"),
                   Protection("user", "PAGE_TABLE_ISOLATION", "y", "pti"),
                   Protection("net", "SYN_COOKIES", "y", "syn")]
    assert missing({"STACKPROTECTOR": "y"}, "ukl", protections) == []
    assert missing({"STACKPROTECTOR": "y", "NET": "y"}, "ukl", protections) == [
        "CONFIG_SYN_COOKIES=y (syn): is n"]
    assert missing({}, "user", protections) == [
        "CONFIG_STACKPROTECTOR=y (canaries): is n", "CONFIG_PAGE_TABLE_ISOLATION=y (pti): is n"]


def test_hardened_recipe_comes_first_and_can_be_turned_off(tmp_path: Path) -> None:
    project = copy_example("hello", tmp_path)
    assert recipes_for(load_settings(project))[0] == "hardened"
    plain = load_settings(project, {"hardened": "false"})
    assert "hardened" not in recipes_for(plain)
    with pytest.raises(ConfigError) as e:
        load_settings(project, {"hardened": "false", "recipes": "hardened;microvm"})
    assert "recipes" in str(e.value) and "-C hardened" in str(e.value), str(e.value)
    with pytest.raises(ConfigError) as e:
        load_settings(project, {"kconfig.STACKPROTECTOR": "n"})
    assert "kconfig.STACKPROTECTOR" in str(e.value) and "hardened = false" in str(e.value)
    load_settings(project, {"kconfig.STACKPROTECTOR": "n", "hardened": "false"})


def test_mitigations_follow_the_mode_unless_set(tmp_path: Path) -> None:
    project = copy_example("hello", tmp_path)

    def first(**over: str) -> list[str]:
        return recipes_for(load_settings(project, over))[:2]

    assert first(mode="ukl") == ["hardened", "server"]
    assert first(mode="user") == ["hardened", "mitigations"]
    assert "mitigations" not in recipes_for(load_settings(project, {"mode": "user",
                                                                    "hardened": "false"}))
    assert first(mode="ukl", mitigations="true") == ["hardened", "mitigations"]
    assert first(mode="user", hardened="false", mitigations="yes") == ["mitigations", "server"]
    assert "mitigations" not in recipes_for(load_settings(project, {"mode": "user",
                                                                    "mitigations": "false"}))
    with pytest.raises(ConfigError) as e:
        load_settings(project, {"mitigations": "false", "recipes": "mitigations;microvm"})
    assert "-C recipes" in str(e.value) and "-C mitigations" in str(e.value), str(e.value)


def test_app_flags_follow_hardened_mode_and_libc(tmp_path: Path) -> None:
    project = copy_example("hello", tmp_path)

    def flags(**over: str) -> tuple[list[str], list[str]]:
        return app_hardening(load_settings(project, over))

    cflags, ldflags = flags(mode="ukl")
    assert "-fstack-protector-strong" in cflags and ldflags == []
    cflags, ldflags = flags(mode="user")  # nolibc sets up no canary: ukl_ssp.h does
    assert {"-fstack-protector-strong", "-fstack-clash-protection",
            "-mstack-protector-guard=global"} <= set(cflags)
    assert cflags[cflags.index("-include") + 1].endswith("ukl_ssp.h")
    assert ldflags == ["-Wl,-e,__ukl_ssp_start"]
    # A newer nolibc (6.12's) has its own stack protector: only the global guard it needs
    sysroot = tmp_path / "sysroot"
    (sysroot / "include").mkdir(parents=True)
    (sysroot / "include" / "stackprotector.h").write_text("")
    cflags, ldflags = app_hardening(load_settings(project, {"mode": "user"}), sysroot)
    assert "-mstack-protector-guard=global" in cflags and "-include" not in cflags
    assert ldflags == []
    cflags, _ = flags(mode="user", libc="glibc")
    assert "-D_FORTIFY_SOURCE=2" in cflags
    cflags, _ = flags(mode="user", libc="musl")
    assert "-D_FORTIFY_SOURCE=2" not in cflags and "-include" not in cflags
    assert flags(hardened="false") == (["-fno-stack-protector"], [])


# -- resolved configurations (kconfig only: tinyconfig + olddefconfig, cached) -------------

def _resolved(patched_tree, cache, project: Path, **over: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    settings = load_settings(project, over)
    with Reporter(None) as r:
        config = configure(patched_tree, ConfigRequest.of(settings),
                           BuildContext(cache, r, dict(os.environ)))
    return read_config(config.path)


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["ukl", "user"])
@pytest.mark.parametrize("app", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
def test_every_example_app_config_has_every_protection(patched_tree, cache, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                       app: str, mode: str) -> None:
    config = _resolved(patched_tree, cache, copy_example(app, tmp_path), mode=mode)
    assert missing(config, mode, load_protections()) == []
    assert config.get("UKL", "n") == ("y" if mode == "ukl" else "n")
    if mode == "ukl":  # exactly its protections: no speculation mitigations in ring 0
        assert _speculation(config) == dict.fromkeys(SPECULATION, "n")


# What the mitigations recipe decides, with two options it brings (retpolines, and the
# return thunks the UNRET/SRSO entry mitigations need).
SPECULATION = ("CPU_MITIGATIONS", "SLS", "PAGE_TABLE_ISOLATION", "RETPOLINE", "RETHUNK")


def _speculation(config: dict[str, str]) -> dict[str, str]:
    return {name: config.get(name, "n") for name in SPECULATION}


@pytest.mark.kernel
def test_the_mitigations_setting_overrides_the_modes_choice(patched_tree, cache,  # type: ignore[no-untyped-def]
                                                            tmp_path: Path) -> None:
    project = copy_example("hello", tmp_path)
    ukl = _resolved(patched_tree, cache, project, mode="ukl", mitigations="true")
    assert _speculation(ukl) == {**dict.fromkeys(SPECULATION, "y"),
                                 "PAGE_TABLE_ISOLATION": "n"}  # the ukl recipe takes it back
    assert missing(ukl, "ukl", load_protections()) == []
    user = _resolved(patched_tree, cache, project, mode="user", mitigations="false")
    assert _speculation(user) == dict.fromkeys(SPECULATION, "n")
    # ... and it lacks exactly the user-mode-only protections (the mitigations recipe's).
    lost = {line.split("=")[0] for line in missing(user, "user", load_protections())}
    assert lost == {f"CONFIG_{p.name}" for p in load_protections() if p.modes == "user"}


@pytest.mark.kernel
def test_hardened_false_leaves_the_recipe_out(patched_tree, cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = _resolved(patched_tree, cache, copy_example("hello", tmp_path), hardened="false")
    assert config.get("STACKPROTECTOR", "n") == "n" and config.get("DEBUG_WX", "n") == "n"


# -- the protections firing (the probe's images, shared with test_ukl.py) ------------------

@pytest.mark.kernel
@pytest.mark.parametrize("libc", ["nolibc", "musl"])
def test_stack_smash_in_ring0_panics_naming_the_function(builds: Builds, libc: str) -> None:
    rc, out, err = run(builds("probe", "ukl", libc=libc).images.directory, "--", "smash",
                       timeout=90)
    assert rc not in (0, 124), out + err
    assert ("Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: "
            "ukl_app_smash") in out, out
    assert "returned through a smashed frame" not in out


def _function_at(binary: Path, address: int) -> str | None:
    with open(binary, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        assert symtab is not None
        for s in symtab.iter_symbols():
            if (s["st_info"]["type"] == "STT_FUNC"
                    and s["st_value"] <= address < s["st_value"] + s["st_size"]):
                return str(s.name)
    return None


@pytest.mark.kernel
def test_stack_smash_in_user_mode_nolibc_is_caught(builds: Builds) -> None:
    rc, out, err = run(builds("probe", "user").images.directory, "--", "smash", timeout=90)
    assert "*** stack smashing detected ***: terminated" in out + err, out + err
    assert rc == 128 + 4, out + err  # SIGILL: __builtin_trap() after the message


@pytest.mark.kernel
def test_stack_smash_in_user_mode_musl_is_caught(builds: Builds) -> None:
    # musl's handler crashes the program where it stands (SIGSEGV); the kernel's report
    # of the fatal signal shows where: in __stack_chk_fail, not at 0x4141414141414141.
    result = builds("probe", "user", libc="musl")
    rc, out, err = run(result.images.directory, "--kernel-log",
                       "--cmdline", "print-fatal-signals=1", "--", "smash", timeout=90)
    assert rc == 128 + 11, out + err
    m = re.search(r"RIP: 0033:(0x)?([0-9a-f]+)", out)
    assert m, out
    assert _function_at(result.app.path, int(m.group(2), 16)) .startswith("__stack_chk_fail"), out
    assert "returned through a smashed frame" not in out


@pytest.mark.kernel
@pytest.mark.parametrize("what", ["write-text", "write-rodata"])
@pytest.mark.parametrize("mode", ["ukl", "user"])
def test_writes_to_the_app_text_and_const_data_fault(builds: Builds, mode: str,
                                                     what: str) -> None:
    rc, out, err = run(builds("probe", mode).images.directory, "--", what, timeout=90)
    assert "the write went through" not in out, out
    if mode == "ukl":
        assert rc not in (0, 124), out + err
        assert "supervisor write access in kernel mode" in out, out
        assert "ukl_app_write_protected" in out, out
    else:
        assert rc == 128 + 11, out + err


def _main_address(out: str) -> int:
    m = re.search(r"probe: main at (0x[0-9a-f]+)", out)
    assert m, out
    return int(m.group(1), 16)


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["ukl", "user"])
def test_no_wx_mappings_at_boot(builds: Builds, mode: str) -> None:
    rc, out, err = run(builds("probe", mode).images.directory, "--kernel-log", "--", "address")
    assert rc == 0, out + err
    assert "x86/mm: Checked W+X mappings: passed, no W+X pages found" in out, out


@pytest.mark.kernel
def test_kaslr_moves_the_ring0_app_between_boots(builds: Builds) -> None:
    result = builds("probe", "ukl")
    with open(result.kernel.vmlinux, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        assert symtab is not None
        linked = next(s["st_value"] for s in symtab.iter_symbols() if s.name == "ukl_app_main")
    seen = set()
    for _ in range(3):  # two boots may pick the same 2 MiB slot (about 1 in 500)
        rc, out, err = run(result.images.directory, "--", "address")
        assert rc == 0, out + err
        seen.add(_main_address(out))
        if len(seen) > 1 and linked not in seen:
            break
    assert len(seen) > 1 and linked not in seen, [hex(a) for a in seen]
    assert all((a - linked) % (2 << 20) == 0 for a in seen)  # the kernel moves in 2 MiB steps
    # (nokaslr, to see main at its link address, cannot be shown: the kernel hands
    # parameters it does not know to init, and the decompressor's are unknown to it)
