#!/usr/bin/env python3
"""Print ukl_build's import graph as docs/design.md shows it: layers (a module imports
only from layers below its own) and each module's imports.  The packages settings and
launcher are one node each.  usage: python scripts/import-graph.py [--dot]"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ukl_build"
GROUPS = ("settings", "launcher")


def node(rel: Path) -> str:
    parts = rel.with_suffix("").parts
    return parts[0] if parts[0] in GROUPS else ".".join(parts)


def imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        me = node(path.relative_to(PACKAGE))
        if me == "__init__":
            me = "__version__"
        deps = graph.setdefault(me, set())
        for n in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("ukl_build"):
                names = [n.module.split(".")[1]] if "." in n.module else [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.level > 0:
                continue  # relative: inside a package that is one node
            elif isinstance(n, ast.Import):
                names = [a.name.split(".")[1] for a in n.names
                         if a.name.startswith("ukl_build.")]
            for name in names:
                dep = "__version__" if name == "__version__" else name
                if dep != me:
                    deps.add(dep)
    return graph


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    level: dict[str, int] = {}

    def depth(m: str, seen: tuple[str, ...] = ()) -> int:
        if m in seen:
            raise SystemExit(f"import cycle: {' -> '.join((*seen, m))}")
        if m not in level:
            level[m] = 1 + max((depth(d, (*seen, m)) for d in graph.get(m, ())), default=-1)
        return level[m]

    for m in graph:
        depth(m)
    return level


def main() -> int:
    graph = imports()
    level = layers(graph)
    if "--dot" in sys.argv:
        print("digraph ukl_build {\n  rankdir=BT;")
        for m, deps in sorted(graph.items()):
            for d in sorted(deps):
                print(f'  "{m}" -> "{d}";')
        print("}")
        return 0
    print("| layer | modules |\n|---|---|")
    for n in range(max(level.values()) + 1):
        print(f"| {n} | {', '.join(f'`{m}`' for m in sorted(k for k, v in level.items() if v == n))} |")
    print()
    for m in sorted(graph, key=lambda k: (level[k], k)):
        if graph[m]:
            deps = sorted(graph[m], key=lambda k: (level[k], k))
            print(f"- `{m}` → {', '.join(deps)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
