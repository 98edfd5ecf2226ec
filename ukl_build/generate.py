"""Stage 4, first step: build-time code generation (``[tool.ukl-build.generate.NAME]``).

Each generator, a command or a Python entry point, writes its outputs into its own
directory under the build directory (never the project), before the app is compiled.
It runs again only when its key changes: its settings, the contents of its inputs and
of its own files (a command's arguments that are project files, an entry point's
module), and the Python it runs on (an entry point, a ``{python}`` command).  The key
is written last, so a generator that failed or was interrupted runs again; a lock
keeps two builds of one project from generating into the same directory at once.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ukl_build.context import BuildContext
from ukl_build.errors import BuildError, ConfigError
from ukl_build.fetch import directory_digest
from ukl_build.files import digest, file_lock, file_sha256
from ukl_build.settings import GenerateSettings, Settings

GENERATE_FORMAT = 1  # bump when a generator's run changes for the same inputs
KEY_FILE = ".ukl-generate-key"
# Where the entry point's module is, as the generator's Python will import it.
_FIND = ("import importlib.util, sys; s = importlib.util.find_spec(sys.argv[1]); "
         "print(s.origin if s is not None and s.origin else '')")
# What an entry point is called through: (out_dir, inputs) as pathlib.Paths.
_CALL = ("import importlib, pathlib, sys; m, f = sys.argv[1].split(':'); "
         "getattr(importlib.import_module(m), f)(pathlib.Path(sys.argv[2]), "
         "[pathlib.Path(p) for p in sys.argv[3:]])")


@dataclass(frozen=True)
class Generated:
    """One generator's outputs, in its directory."""

    name: str
    directory: Path
    outputs: tuple[Path, ...]
    key: str

    @property
    def sources(self) -> list[Path]:
        """The outputs compiled with the app's ``sources``."""
        return [p for p in self.outputs if p.suffix == ".c"]


def generate(settings: Settings, build_dir: Path, ctx: BuildContext) -> list[Generated]:
    """Run (or reuse) every generator of ``settings``, in name order."""
    if not settings.generate:
        return []
    root = build_dir / "generated"
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):
        return [_one(name, spec, settings, root, ctx)
                for name, spec in sorted(settings.generate.items())]


def _one(name: str, spec: GenerateSettings, settings: Settings, root: Path,
         ctx: BuildContext) -> Generated:
    where = f"[tool.ukl-build.generate.{name}]"
    key = _key(name, spec, settings, ctx, where)
    out = root / name
    outputs = tuple(out / o for o in spec.outputs)
    done = out / KEY_FILE
    if done.is_file() and done.read_text() == key and all(p.is_file() for p in outputs):
        ctx.reporter.stage("generate", f"{name}: unchanged")
        return Generated(name, out, outputs, key)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    try:
        ctx.reporter.stage("generate", name)
        ctx.reporter.run(_argv(spec, settings, out), step=f"{where} (generate)",
                         cwd=settings.project_dir, env=_env(spec, settings, ctx))
        missing = [o for o, p in zip(spec.outputs, outputs, strict=True) if not p.is_file()]
        if missing:
            raise BuildError(f"{where}: the generator did not make {', '.join(missing)} "
                             f"(in {out})", hint="outputs lists what it writes into {out}")
        done.write_text(key)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-generated directory stays
        raise
    return Generated(name, out, outputs, key)


def _argv(spec: GenerateSettings, settings: Settings, out: Path) -> list[str]:
    inputs = [str(settings.project_dir / i) for i in spec.inputs]
    if spec.entry_point is not None:
        return [sys.executable, "-c", _CALL, spec.entry_point, str(out), *inputs]
    assert spec.command is not None
    argv: list[str] = []
    for arg in spec.command:
        if arg == "{inputs}":
            argv += inputs
        else:
            argv.append(arg.replace("{out}", str(out)).replace("{python}", sys.executable))
    return argv


def _env(spec: GenerateSettings, settings: Settings, ctx: BuildContext) -> dict[str, str]:
    """The build's environment; an entry point imports from the project directory first."""
    env = dict(ctx.env)
    if spec.entry_point is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(settings.project_dir), env.get("PYTHONPATH", "")) if p)
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # nothing written into the project
    return env


def _key(name: str, spec: GenerateSettings, settings: Settings, ctx: BuildContext,
         where: str) -> str:
    project = settings.project_dir
    own = _own_files(spec, settings, ctx, where)
    contents = [(rel, _digest_path(project / rel)) for rel in spec.inputs]
    contents += [(str(p), _digest_path(p)) for p in own]
    runs_python = spec.entry_point is not None or any("{python}" in a for a in spec.command or [])
    python = sys.version if runs_python else None
    return digest("generate", GENERATE_FORMAT, name, spec.command, spec.entry_point,
                  spec.inputs, spec.outputs, contents, python)


def _own_files(spec: GenerateSettings, settings: Settings, ctx: BuildContext,
               where: str) -> list[Path]:
    """The generator's own files: a command's arguments that name a project file; an entry
    point's module, found as the generator will import it (the project first)."""
    project = settings.project_dir
    if spec.entry_point is None:
        assert spec.command is not None
        return [project / arg for arg in spec.command
                if "{" not in arg and not arg.startswith("-") and _project_file(project, arg)]
    module = spec.entry_point.split(":")[0]
    found = ctx.reporter.capture(
        [sys.executable, "-c", _FIND, module], step=f"{where} (find {module})",
        cwd=project, env=_env(spec, settings, ctx), check=False)
    origin = Path(found.text.strip()) if found.returncode == 0 else None
    if origin is None or not origin.is_file():
        raise ConfigError(f"{where} entry-point: cannot import {module} from {project} or "
                          "the Python running ukl-build")
    return [origin]


def _project_file(project: Path, arg: str) -> bool:
    path = (project / arg).resolve()
    return path.is_file() and path.is_relative_to(project.resolve())


def _digest_path(path: Path) -> str:
    return directory_digest(path, frozenset()) if path.is_dir() else file_sha256(path)


def generated_key(generated: Sequence[Generated]) -> str | None:
    """What the generators made, for the app's key (None without generators)."""
    return digest(*(g.key for g in generated)) if generated else None


def generated_dirs(generated: Sequence[Generated]) -> dict[str, Path]:
    """``{generated.NAME}`` -> the generator's output directory."""
    return {g.name: g.directory for g in generated}
