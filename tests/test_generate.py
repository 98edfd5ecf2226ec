"""[tool.ukl-build.generate]: build-time generators, run into the build directory and
reused while their inputs and their own files are unchanged.  The end-to-end use is
tests/apps/argv (a lookup table generated and compiled with the app, both modes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ukl_build.cache import Cache
from ukl_build.context import BuildContext
from ukl_build.errors import BuildError, ConfigError
from ukl_build.generate import Generated, generate
from ukl_build.progress import Reporter
from ukl_build.settings import load_settings

BASE = '[project]\nname = "g"\nversion = "1"\n[tool.ukl-build]\nsources = ["a.c"]\n'
TABLE = '''"""A lookup table: squares.h from the numbers in squares.txt."""
from pathlib import Path


def squares(out: Path, inputs: list[Path]) -> None:
    n = [int(x) for x in inputs[0].read_text().split()]
    (out / "squares.h").write_text(
        "static const int squares[] = {" + ", ".join(str(i * i) for i in n) + "};\\n")
'''


def project(tmp: Path, table: str) -> Path:
    (tmp / "a.c").write_text("int main(void) { return 0; }\n")
    (tmp / "gen").mkdir(exist_ok=True)
    (tmp / "gen" / "table.py").write_text(TABLE)
    (tmp / "squares.txt").write_text("1 2 3\n")
    (tmp / "pyproject.toml").write_text(BASE + table)
    return tmp


ENTRY = ('[tool.ukl-build.generate.squares]\nentry-point = "gen.table:squares"\n'
         'inputs = ["squares.txt"]\noutputs = ["squares.h"]\n')
COMMAND = ('[tool.ukl-build.generate.hello]\n'
           'command = ["{python}", "gen/hello.py", "{out}", "{inputs}"]\n'
           'inputs = ["squares.txt"]\noutputs = ["hello.c", "hello.h"]\n')
HELLO = '''import sys
from pathlib import Path
out = Path(sys.argv[1])
(out / "hello.h").write_text("int hello(void);\\n")
(out / "hello.c").write_text("int hello(void) { return %d; }\\n" % len(sys.argv[2:]))
'''


def run(tmp: Path) -> tuple[list[Generated], str]:
    settings = load_settings(tmp)
    log = tmp / "log"
    with Reporter(log) as r:
        got = generate(settings, tmp / "build", BuildContext(Cache(tmp / "cache"), r,
                                                             dict(os.environ)))
    return got, log.read_text()


def test_an_entry_point_runs_once_until_its_inputs_change(tmp_path: Path) -> None:
    project(tmp_path, ENTRY)
    (g,), log = run(tmp_path)
    assert g.directory == tmp_path / "build" / "generated" / "squares"
    assert (g.directory / "squares.h").read_text() == "static const int squares[] = {1, 4, 9};\n"
    assert g.sources == []
    assert not list(tmp_path.glob("gen/__pycache__"))  # nothing written into the project
    (again,), log = run(tmp_path)
    assert again.key == g.key and "squares: unchanged" in log
    (tmp_path / "squares.txt").write_text("4\n")
    (changed,), _ = run(tmp_path)
    assert changed.key != g.key
    assert (changed.directory / "squares.h").read_text() == "static const int squares[] = {16};\n"
    # the generator's own module is part of its key
    (tmp_path / "gen" / "table.py").write_text(TABLE.replace("i * i", "i * i * i"))
    (cubes,), _ = run(tmp_path)
    assert cubes.key != changed.key and "{64}" in (cubes.directory / "squares.h").read_text()


def test_a_command_with_its_placeholders(tmp_path: Path) -> None:
    project(tmp_path, COMMAND)
    (tmp_path / "gen" / "hello.py").write_text(HELLO)
    (g,), _ = run(tmp_path)
    assert [p.name for p in g.sources] == ["hello.c"]
    assert "return 1;" in (g.directory / "hello.c").read_text()  # {inputs}: one path
    key = g.key
    (tmp_path / "gen" / "hello.py").write_text(HELLO.replace("%d", "%d + 0"))
    (g,), _ = run(tmp_path)
    assert g.key != key  # gen/hello.py, an argument that is a project file, is keyed


def test_a_failing_generator_names_its_entry_and_leaves_nothing(tmp_path: Path) -> None:
    project(tmp_path, COMMAND)
    (tmp_path / "gen" / "hello.py").write_text("raise SystemExit('no table today')\n")
    with pytest.raises(BuildError, match=r"\[tool.ukl-build.generate.hello\] \(generate\)"):
        run(tmp_path)
    assert not (tmp_path / "build" / "generated" / "hello").exists()
    (tmp_path / "gen" / "hello.py").write_text("pass\n")
    with pytest.raises(BuildError, match=r"generate.hello\]: the generator did not make "
                                         r"hello.c, hello.h"):
        run(tmp_path)
    assert not (tmp_path / "build" / "generated" / "hello").exists()


@pytest.mark.parametrize(("table", "message"), [
    ('[tool.ukl-build.generate.t]\noutputs = ["t.h"]\n',
     "[tool.ukl-build.generate] t: set exactly one of command, entry-point"),
    ('[tool.ukl-build.generate.t]\ncommand = ["x"]\nentry-point = "a:b"\noutputs = ["t.h"]\n',
     "set exactly one of command, entry-point"),
    ('[tool.ukl-build.generate.t]\nentry-point = "a.b"\noutputs = ["t.h"]\n',
     '[tool.ukl-build.generate.t] entry-point: expected "module:function"'),
    ('[tool.ukl-build.generate.t]\ncommand = ["x"]\n',
     "[tool.ukl-build.generate.t] outputs: name what it makes"),
    ('[tool.ukl-build.generate.t]\ncommand = ["x"]\noutputs = ["../t.h"]\n',
     "'../t.h' is not a plain path inside the output directory"),
    ('[tool.ukl-build.generate.t]\ncommand = ["x"]\noutputs = ["t.h"]\ninputs = ["nope"]\n',
     "[tool.ukl-build.generate.t] inputs: nope does not exist"),
    ('[tool.ukl-build.generate.t]\ncommand = ["x"]\noutputs = ["t.h"]\ninputs = ["../x"]\n',
     "is outside the project"),
    ('[tool.ukl-build.generate.T]\ncommand = ["x"]\noutputs = ["t.h"]\n',
     "'T' is not a usable generator name"),
])
def test_bad_generators_are_refused_naming_the_key(tmp_path: Path, table: str,
                                                   message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(project(tmp_path, table))
    assert message in str(e.value)


def test_make_arguments_name_known_generators(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "g"\nversion = "1"\n[tool.ukl-build]\nlibc = "musl"\n'
        '[tool.ukl-build.make]\nargs = ["GEN={generated.tables}"]\n')
    with pytest.raises(ConfigError, match=r"names \{generated.tables\}, which is not a "
                                          r"\[tool.ukl-build.generate\] entry"):
        load_settings(tmp_path)


def test_an_entry_point_is_found_in_the_project_first_then_installed(tmp_path: Path) -> None:
    project(tmp_path, ENTRY.replace("gen.table:squares", "nowhere.at_all:make"))
    with pytest.raises(ConfigError, match=r"generate.squares\] entry-point: cannot import "
                                          r"nowhere.at_all"):
        run(tmp_path)
    # an installed module works too, and its file is what is keyed
    gen = tmp_path / "site"
    gen.mkdir()
    (gen / "installed_gen.py").write_text(TABLE)
    project(tmp_path, ENTRY.replace("gen.table:squares", "installed_gen:squares"))
    settings = load_settings(tmp_path)
    with Reporter(tmp_path / "log") as r:
        env = dict(os.environ, PYTHONPATH=str(gen))
        (g,) = generate(settings, tmp_path / "build", BuildContext(Cache(tmp_path / "c"), r, env))
    assert "{1, 4, 9}" in (g.directory / "squares.h").read_text()
