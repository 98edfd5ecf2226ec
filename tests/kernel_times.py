"""Where the suite's kernel time goes: every kernel make the session's builds ran.

Read from the build logs the session left under its base temp directory (each
worker's too) and printed at the end of the run, longest first, with the test
directory that holds each log (a test's tmp_path, or a session build's
``app-mode`` directory).  A project built again later overwrites its log, so a
relink can hide an earlier make in the same project; cold builds come first
and are rarely rebuilt in place.

``python tests/kernel_times.py BASETEMP`` prints the same table afterwards.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path

_RECIPES = re.compile(r"^\[ukl-build\] kconfig: tinyconfig \+ (.*)$", re.M)
_MODE = re.compile(r"^\[ukl-build\] config: .*?: mode (\w+)", re.M)
_MAKE = re.compile(r"^\[ukl-build\] kbuild: (cold|incremental) build of Linux \S+ in \S+/kbuild/(\w{12})",
                   re.M)
_DONE = re.compile(r"^\[ukl-build\] kbuild: done: (\d+) steps in (\d+) s", re.M)


@dataclass(frozen=True)
class KernelMake:
    seconds: int
    kind: str  # cold or incremental
    steps: int
    mode: str
    recipes: str
    build_dir: str  # the first 12 characters of the kernel build directory's key
    where: str  # the log's directory below the base temp directory


def kernel_makes(basetemp: Path) -> list[KernelMake]:
    found = []
    for log in basetemp.rglob("build.log"):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        make, done = _MAKE.search(text), _DONE.search(text)
        if make is None or done is None:
            continue
        recipes, mode = _RECIPES.search(text), _MODE.search(text)
        project = log.parent.parent.parent  # PROJECT/build/ukl-build/build.log
        parts = project.relative_to(basetemp).parts if project.is_relative_to(basetemp) else ()
        where = "/".join(p for p in parts if not p.startswith("popen-gw")) or str(project)
        found.append(KernelMake(int(done.group(2)), make.group(1), int(done.group(1)),
                                mode.group(1) if mode else "?",
                                recipes.group(1) if recipes else "?", make.group(2), where))
    # A build whose configuration was cached does not list its recipes: another of the
    # same build directory does.
    recipes_of = {k.build_dir: k.recipes for k in found if k.recipes != "?"}
    found = [dataclasses.replace(k, recipes=recipes_of.get(k.build_dir, "?")) for k in found]
    return sorted(found, key=lambda k: -k.seconds)


def table(makes: list[KernelMake]) -> list[str]:
    lines = [f"{'s':>5} {'kind':<11} {'steps':>5} {'mode':<4} {'build dir':<12} where  [recipes]"]
    lines += [f"{k.seconds:>5} {k.kind:<11} {k.steps:>5} {k.mode:<4} {k.build_dir:<12} {k.where}  "
              f"[{k.recipes}]" for k in makes]
    cold = sum(k.seconds for k in makes if k.kind == "cold")
    lines.append(f"{len(makes)} kernel makes: {sum(k.seconds for k in makes)} s "
                 f"({cold} s in {sum(k.kind == 'cold' for k in makes)} cold builds)")
    return lines


if __name__ == "__main__":
    print("\n".join(table(kernel_makes(Path(sys.argv[1])))))
