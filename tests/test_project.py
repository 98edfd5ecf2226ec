"""[project] -> core metadata (METADATA / PKG-INFO): validated by packaging, errors name the key."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.metadata import Metadata

from ukl_build.errors import ConfigError
from ukl_build.project import LAUNCHER_PYTHON, load_project


def load(tmp_path: Path, text: str) -> Metadata:
    """The project's METADATA as a reader (pip, PyPI) parses it back."""
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(text)
    project = load_project(tomllib.loads(text)["project"], pyproject)
    return Metadata.from_email(project.metadata_bytes())


def test_full_project_table_reaches_the_metadata(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Demo\n\nA unikernel.\n")
    (tmp_path / "LICENSE").write_text("MIT License\n")
    m = load(tmp_path, """
[project]
name = "Demo.App"
version = "1.2.3"
description = "A demo"
readme = "README.md"
requires-python = ">=3.10"
license = "MIT"
license-files = ["LICEN[CS]E*"]
authors = [{ name = "Ada", email = "ada@example.org" }, { name = "Bob" }]
keywords = ["unikernel", "redis"]
classifiers = ["Operating System :: POSIX :: Linux"]
urls = { Homepage = "https://example.org" }
dependencies = ["requests>=2; python_version >= '3.10'"]
optional-dependencies = { Test = ["pytest>=7; sys_platform == 'linux'", "coverage"] }
""")
    assert m.metadata_version == "2.4"  # License-Expression and License-File need 2.4
    assert (m.name, str(m.version), m.summary) == ("Demo.App", "1.2.3", "A demo")
    assert str(m.requires_python) == ">=3.10,>=3.9"
    assert m.license_expression == "MIT" and m.license_files == ["LICENSE"]
    assert m.author == "Bob" and m.author_email == "Ada <ada@example.org>"
    assert m.keywords == ["unikernel", "redis"]
    assert m.classifiers == ["Operating System :: POSIX :: Linux"]
    assert m.project_urls == {"Homepage": "https://example.org"}
    assert m.provides_extra == ["test"]
    assert [str(r) for r in m.requires_dist or []] == [
        'requests>=2; python_version >= "3.10"',
        'pytest>=7; sys_platform == "linux" and extra == "test"',
        'coverage; extra == "test"']
    assert m.description_content_type == "text/markdown"
    assert m.description is not None and "A unikernel." in m.description


def test_minimal_project_needs_the_launchers_python(tmp_path: Path) -> None:
    m = load(tmp_path, '[project]\nname = "x"\nversion = "1"\n')
    assert m.metadata_version == "2.1" and m.requires_python == LAUNCHER_PYTHON


# Standard library modules the launcher must not use: added after Python 3.9.
AFTER_3_9 = frozenset({"tomllib"})


def test_launcher_keeps_to_the_python_it_claims() -> None:
    """Every wheel's launcher is the ukl_build.launcher package, copied: its syntax must hold
    for Requires-Python's floor, and it may import the standard library and itself only."""
    floor = tuple(int(x) for x in next(iter(LAUNCHER_PYTHON)).version.split("."))
    package = Path(__file__).resolve().parent.parent / "ukl_build" / "launcher"
    modules = sorted(package.glob("*.py"))
    assert {p.stem for p in modules} >= {"__init__", "cli", "manifest", "qemu", "run"}
    for path in modules:
        tree = ast.parse(path.read_text(), str(path), feature_version=floor[:2])
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue  # relative: the package itself
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "__future__", \
                    f"{path.name}: imports {name}, not the standard library"
                assert top not in AFTER_3_9, f"{path.name}: {name} is newer than Python 3.9"
            # keyword arguments that Python 3.9 does not know
            if isinstance(node, ast.Call):
                assert not {k.arg for k in node.keywords} & {"strict", "kw_only", "slots"}, \
                    f"{path.name}:{node.lineno}: an argument newer than Python 3.9"
        # X | None in annotations needs them unevaluated on 3.9
        assert "from __future__ import annotations" in path.read_text(), path.name


# The modules that may start a program themselves, and why; everything else in ukl_build
# goes through progress.Reporter (run: logged, supervised; capture: logged, dies with us).
STARTS_PROGRAMS = {
    "progress.py": "the runner itself",
    "supervise.py": "the runner's supervisor, which forks the command it supervises",
    "launcher/run.py": "the wheel's launcher starts QEMU (standard library only, no Reporter)",
    "launcher/accel.py": "the wheel's launcher probes KVM with a short QEMU run",
    "launcher/volumes.py": "the wheel's launcher formats a volume's new file with mkfs",
    "pytest_plugin.py": "a VM in the background of a test, through the launcher",
}
_PROCESS_CALLS = {("subprocess", n) for n in ("run", "Popen", "call", "check_call",
                                              "check_output", "getoutput", "getstatusoutput")} \
    | {("os", n) for n in ("system", "popen", "execv", "execve", "execvp", "execvpe", "execl",
                           "execlp", "spawnv", "spawnvp", "posix_spawn", "posix_spawnp")}


def test_every_program_starts_through_the_runner() -> None:
    """A program started outside the runner is neither logged nor killed with the build."""
    package = Path(__file__).resolve().parent.parent / "ukl_build"
    found = set()
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            func = node.func if isinstance(node, ast.Call) else None
            if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                    and (func.value.id, func.attr) in _PROCESS_CALLS):
                assert rel in STARTS_PROGRAMS, \
                    f"{rel}:{node.lineno}: {func.value.id}.{func.attr} outside the runner " \
                    "(use Reporter.run or Reporter.capture)"
                found.add(rel)
            if isinstance(node, ast.ImportFrom) and node.module in ("subprocess", "os"):
                assert not {(node.module, a.name) for a in node.names} & _PROCESS_CALLS, \
                    f"{rel}:{node.lineno}: imports a way to start programs by name"
    assert found == set(STARTS_PROGRAMS)  # no stale exception


def test_the_package_keeps_its_limits() -> None:
    """Every function of ukl_build at most cyclomatic complexity 12 (radon's count,
    closures and methods included) and six parameters; every module at most 450 lines."""
    from radon.complexity import cc_visit

    package = Path(__file__).resolve().parent.parent / "ukl_build"
    over = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(package).as_posix()
        if text.count("\n") > 450:
            over.append(f"{rel}: {text.count(chr(10))} lines")
        blocks = list(cc_visit(text))
        while blocks:
            b = blocks.pop()
            blocks += [*getattr(b, "methods", []), *getattr(b, "closures", [])]
            if b.complexity > 12 and not hasattr(b, "methods"):  # a class sums its methods
                over.append(f"{rel}: {b.name} has complexity {b.complexity}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                count = len(names) + bool(a.vararg) + bool(a.kwarg) - (names[:1] in (["self"], ["cls"]))
                if count > 6:
                    over.append(f"{rel}:{node.lineno}: {node.name} takes {count} parameters")
    assert not over, "\n".join(over)


def test_the_design_doc_draws_the_import_graph_as_it_is() -> None:
    """docs/design.md's import graph is what scripts/import-graph.py reads from the
    sources now (which also refuses a cycle)."""
    root = Path(__file__).resolve().parent.parent
    graph = subprocess.run([sys.executable, str(root / "scripts" / "import-graph.py")],
                           capture_output=True, text=True, check=True).stdout
    assert graph.strip() in (root / "docs" / "design.md").read_text(), \
        "docs/design.md: the import graph changed; paste python scripts/import-graph.py"


@pytest.mark.parametrize(("extra", "message"), [
    ('version = "one"', r"\[project\] version: .*one"),
    ('version = "1"\nrequires-python = ">=3.x"', r"\[project\] requires-python:"),
    ('version = "1"\ndependencies = ["not a requirement!"]', r"\[project\] dependencies: "),
    ('version = "1"\nlicense = "Not-A-License"', r"\[project\] license:"),
    ('version = "1"\nreadme = "missing.md"', r"\[project\] readme: 'missing.md': no such file"),
    ('version = "1"\nreadme = { text = "hi" }', r"\[project\] readme: content-type needed"),
    ('version = "1"\ndynamic = ["dependencies"]', r"\[project\] dynamic: .*computes no metadata"),
    ('version = "1"\nscripts = { x = "y:z" }', r"\[project\] scripts: not supported"),
    ('version = "1"\nlicense-files = ["COPYING*"]', r"\[project\] license-files: .* matches no"),
    ('version = "1"\ncolour = "blue"', r"\[project\] colour: not a PEP 621 key"),
    ('version = "1"\nclassifiers = "x"', r"\[project\] classifiers: must be a list of strings"),
])
def test_bad_project_tables_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load(tmp_path, f'[project]\nname = "x"\n{extra}\n')
    assert "pyproject.toml" in str(e.value)


def test_another_backend_owns_the_rest_of_the_table(tmp_path: Path) -> None:
    """The setuptools plugin: setuptools checks and writes [project]; only the identity is read."""
    text = '[project]\nname = "x"\nversion = "1"\ndynamic = ["readme"]\nscripts = { x = "x:main" }\n'
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(text)
    project = load_project(tomllib.loads(text)["project"], pyproject, own_metadata=False)
    assert (project.name, project.version) == ("x", "1")
    with pytest.raises(ConfigError, match="dynamic"):
        load_project(tomllib.loads(text)["project"], pyproject)
