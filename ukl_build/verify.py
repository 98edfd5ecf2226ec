"""``python -m ukl_build verify PROJECT``: build twice, independently, and compare.

Each build gets its own copy of the project and its own empty cache (its own
kernel tree; no compiler cache, remote store or distcc: each compiles every
file itself), in directories of different names and depths: a path, a time
or a cache hit that leaks into an output shows up as a difference.
Compared, in the order a cause comes before its effects: the app binary, the
linked vmlinux, then every file of the image directory (images, .config,
manifest, SBOM) and the wheel.  The first difference is reported with a
pointer: the offset and, in an ELF file, the section; in JSON, the key; in
the wheel, the member.

``--against PATH`` builds once, the same way, and compares with outputs made
elsewhere: an image directory (what ``build`` writes) or a wheel.  That is the
check a user of a shipped image wants (was it built from this source?), and
the reference may come from any build: a warm cache, a compiler cache, a
distcc farm.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from ukl_build.cache import Cache
from ukl_build.errors import BuildError, UklError
from ukl_build.files import file_sha256
from ukl_build.pipeline import BuildOptions, BuildResult, build, source_date_epoch
from ukl_build.progress import Reporter
from ukl_build.wheel import write_wheel

# Different names and depths, so that a recorded path cannot match by accident.
_LAYOUT = ("a", "second-build/b")


@dataclass(frozen=True)
class Output:
    """One compared file of one build."""

    label: str  # what it is, e.g. "image ukl_hello.bzImage"
    path: Path


@dataclass(frozen=True)
class Report:
    compared: list[tuple[str, str]]  # (label, sha256) of each file both builds made alike
    difference: str | None  # the first difference, with a pointer into the file
    work: Path  # where both builds are (kept when they differ)
    against: Path | None = None  # the reference (--against), if not a second build


def outputs(result: BuildResult, wheel: Path) -> list[Output]:
    """What one build produced that must not depend on where or when it ran."""
    out = [Output("app binary (before linking)", result.app.path),
           Output("vmlinux (the linked kernel)", result.kernel.vmlinux)]
    out += [Output(f"image {p.name}", p) for p in result.images.files()]
    out.append(Output(f"wheel {wheel.name}", wheel))
    return out


def verify(project: Path, config_settings: dict[str, Any] | None, work: Path,
           stream: TextIO | None = None, against: Path | None = None) -> Report:
    """Two builds of ``project`` under ``work`` and the comparison of their outputs;
    with ``against``, one build compared with that image directory or wheel."""
    if against is None:
        first, second = (_one_build(project, config_settings, work / sub, f"{n} of 2", stream)
                         for n, sub in enumerate(_LAYOUT, 1))
        return compare(first, second, work)
    reference = reference_outputs(against)
    ours = _one_build(project, config_settings, work / _LAYOUT[0], "1 of 1", stream)
    return replace(compare(_like(ours, against), reference, work), against=against)


def _one_build(project: Path, config_settings: dict[str, Any] | None, root: Path, which: str,
               stream: TextIO | None) -> list[Output]:
    copy = root / "src" / project.resolve().name
    shutil.copytree(project, copy, symlinks=True,
                    ignore=shutil.ignore_patterns("build", "dist", ".git"))
    if stream:
        print(f"[ukl-build] verify: build {which} in {root} (empty cache)", file=stream,
              flush=True)
    result = build(copy, config_settings, cache=Cache(root / "cache"), stream=stream,
                   out_dir=root / "image", options=BuildOptions(shared_compilers=False))
    (root / "wheel").mkdir()
    name = write_wheel(result.settings, result.images, root / "wheel", source_date_epoch())
    return outputs(result, root / "wheel" / name)


def reference_outputs(path: Path) -> list[Output]:
    """What ``--against PATH`` compares with: a wheel, or every file of an image directory."""
    if path.is_file() and path.suffix == ".whl":
        return [Output(f"wheel {path.name}", path)]
    if path.is_dir() and (path / "manifest.json").is_file():
        return [Output(f"image {p.name}", p) for p in sorted(path.iterdir()) if p.is_file()]
    raise UklError(f"verify --against {path}: neither a wheel (.whl) nor an image directory "
                   "(one holding manifest.json, as `build` writes it)")


def _like(ours: list[Output], against: Path) -> list[Output]:
    """Our outputs of the kinds the reference has (a wheel, or the image files)."""
    wanted = "wheel " if against.is_file() else "image "
    return sorted((o for o in ours if o.label.startswith(wanted)), key=lambda o: o.label)


def compare(first: list[Output], second: list[Output], work: Path) -> Report:
    same: list[tuple[str, str]] = []
    labels_a = [o.label for o in first]
    labels_b = [o.label for o in second]
    if labels_a != labels_b:
        extra = sorted(set(labels_a) ^ set(labels_b))
        return Report(same, f"the builds made different files: {', '.join(extra)}", work)
    with Reporter(work / "compare.log") as reporter:
        for a, b in zip(first, second, strict=True):
            why = first_difference(a.path, b.path, reporter)
            if why is not None:
                return Report(same, f"{a.label}: {why}\n    {a.path}\n    {b.path}", work)
            same.append((a.label, file_sha256(a.path)))
    return Report(same, None, work)


def first_difference(a: Path, b: Path, reporter: Reporter) -> str | None:
    """None if the files are equal; else where they first differ, as precisely as we can."""
    da, db = a.read_bytes(), b.read_bytes()
    if da == db:
        return None
    if a.suffix == ".whl":
        return _zip_difference(a, b)
    if a.suffix == ".json":
        try:
            where = _json_difference(json.loads(da), json.loads(db), "")
        except ValueError:
            where = None
        if where is not None:
            return f"JSON differs at {where or 'the top level'}"
    offset = _first_offset(da, db)
    text = f"first differing byte at offset {offset:#x} (sizes {len(da)} and {len(db)})"
    if da[:4] == b"\x7fELF":
        section = elf_section_at(a, offset, reporter)
        if section:
            text += f", in ELF section {section}"
    return text


def _first_offset(a: bytes, b: bytes, chunk: int = 1 << 16) -> int:
    """The first offset where ``a`` and ``b`` differ (the shorter's length if one is a prefix)."""
    end = min(len(a), len(b))
    pos = 0
    while pos < end and a[pos:pos + chunk] == b[pos:pos + chunk]:
        pos += chunk
    return next((i for i in range(pos, min(pos + chunk, end)) if a[i] != b[i]), end)


def _json_difference(x: Any, y: Any, path: str) -> str | None:
    if type(x) is not type(y):
        return path
    if isinstance(x, dict):
        for key in sorted(set(x) | set(y)):
            if key not in x or key not in y:
                return f"{path}.{key}"
            where = _json_difference(x[key], y[key], f"{path}.{key}")
            if where is not None:
                return where
        return None
    if isinstance(x, list):
        for i, (p, q) in enumerate(zip(x, y, strict=False)):
            where = _json_difference(p, q, f"{path}[{i}]")
            if where is not None:
                return where
        return None if len(x) == len(y) else f"{path}[{min(len(x), len(y))}]"
    return None if x == y else path


def _zip_difference(a: Path, b: Path) -> str:
    import zipfile

    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        names_a, names_b = za.namelist(), zb.namelist()
        if names_a != names_b:
            return f"different members: {sorted(set(names_a) ^ set(names_b)) or 'order'}"
        for name in names_a:
            ia, ib = za.getinfo(name), zb.getinfo(name)
            if za.read(name) != zb.read(name):
                return f"member {name} differs"
            if (ia.date_time, ia.external_attr) != (ib.date_time, ib.external_attr):
                return f"member {name}: time or mode differs"
    return "the archives differ outside their members (zip headers)"


_SECTION = re.compile(r"^\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)")


def elf_section_at(path: Path, offset: int, reporter: Reporter) -> str | None:
    """The section of an ELF file that holds file offset ``offset`` (readelf's table)."""
    try:
        out = reporter.capture(["readelf", "-S", "-W", path],
                               step=f"verify (readelf -S {path.name})").text
    except BuildError:
        return None
    for line in out.splitlines():
        m = _SECTION.match(line)
        if m:
            start, size = int(m.group(2), 16), int(m.group(3), 16)
            if start <= offset < start + size:
                return f"{m.group(1)} (+{offset - start:#x})"
    return None


def print_report(report: Report, out: TextIO) -> int:
    """Print the outcome; the exit status of ``verify``."""
    if report.difference is None:
        what = (f"identical to {report.against}" if report.against is not None
                else "identical in two independent builds")
        print(f"verify: reproducible: {len(report.compared)} outputs {what}", file=out)
        for label, digest in report.compared:
            print(f"  {digest}  {label}", file=out)
        return 0
    print(f"verify: NOT reproducible; first difference:\n  {report.difference}", file=out)
    return 1
