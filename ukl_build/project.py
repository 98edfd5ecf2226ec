"""``[project]``: the distribution's identity and core metadata (PEP 621), not a tool setting.

The table is turned into the core metadata of the wheel and sdist (METADATA,
PKG-INFO) through the ``packaging`` library's :class:`~packaging.metadata.Metadata`,
which validates every field and writes the RFC 822 form.  What ukl-build cannot
honour is refused by name: dynamic fields (nothing computes them), and
scripts or entry points (the native backend ships no Python code of the
project; the setuptools plugin path does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from packaging.markers import Marker
from packaging.metadata import ExceptionGroup, InvalidMetadata, Metadata, RawMetadata
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from ukl_build.errors import ConfigError

_DIST_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)  # PEP 508
# The launcher in every wheel is the ukl_build.launcher package, which keeps to Python 3.9
# (tests/test_project.py checks its syntax and imports): whatever the project allows, the
# wheel needs at least this.
LAUNCHER_PYTHON = SpecifierSet(">=3.9")
README_TYPES = {".md": "text/markdown", ".rst": "text/x-rst", ".txt": "text/plain"}
_KNOWN = frozenset({"name", "version", "description", "readme", "requires-python", "license",
                    "license-files", "authors", "maintainers", "keywords", "classifiers", "urls",
                    "dependencies", "optional-dependencies", "scripts", "gui-scripts",
                    "entry-points", "dynamic"})
_REFUSED = {"scripts": "the wheel's one script is the launcher, named after the project",
            "gui-scripts": "the wheel ships no Python code of the project",
            "entry-points": "the wheel ships no Python code of the project"}
# Core metadata field -> the [project] key it comes from, for error messages.
_FIELD_KEYS = {"name": "name", "version": "version", "summary": "description",
               "description": "readme", "description_content_type": "readme",
               "requires_python": "requires-python", "license": "license",
               "license_expression": "license", "license_files": "license-files",
               "author": "authors", "author_email": "authors", "maintainer": "maintainers",
               "maintainer_email": "maintainers", "keywords": "keywords",
               "classifiers": "classifiers", "project_urls": "urls",
               "requires_dist": "dependencies", "provides_extra": "optional-dependencies"}


@dataclass(frozen=True)
class Project:
    """The project as a distribution: name, version and validated core metadata."""

    name: str
    version: str
    summary: str
    metadata: Metadata
    license_files: tuple[Path, ...] = ()  # relative to the project, for .dist-info/licenses/

    @property
    def dist_name(self) -> str:
        """The distribution name as it appears in file names (and the launcher's module)."""
        return canonicalize_name(self.name).replace("-", "_")

    def metadata_bytes(self) -> bytes:
        """METADATA / PKG-INFO."""
        return bytes(self.metadata.as_rfc822())


def load_project(table: Any, pyproject: Path, own_metadata: bool = True) -> Project:
    """The ``[project]`` table of ``pyproject``, checked and turned into core metadata.

    ``own_metadata=False``: another backend (setuptools, with the plugin) writes the
    metadata and checks the rest of the table; only the identity is read here.
    """
    where = f"{pyproject}: [project]"
    if not isinstance(table, dict):
        raise ConfigError(f"{pyproject}: missing [project] table")
    name, version = _identity(table, where)
    if not own_metadata:
        table = {k: table[k] for k in ("name", "version", "description") if k in table}
    _refuse(table, where)
    license_files = _license_files(table, pyproject.parent, where)
    raw = _raw_metadata(table, pyproject.parent, where)
    if license_files:
        raw.update(metadata_version="2.4", license_files=[p.as_posix() for p in license_files])
    try:
        metadata = Metadata.from_raw(cast(RawMetadata, raw), validate=True)
    except ExceptionGroup as group:
        first = group.exceptions[0]
        field = first.field if isinstance(first, InvalidMetadata) else ""
        key = _FIELD_KEYS.get(field.replace("-", "_"), field)
        raise ConfigError(f"{where} {key}: {first}") from None
    return Project(name, version, raw.get("summary", ""), metadata, license_files)


def _identity(table: dict[str, Any], where: str) -> tuple[str, str]:
    for key in ("name", "version"):
        if not isinstance(table.get(key), str):
            raise ConfigError(f"{where} {key} must be a string",
                              hint="dynamic name/version are not supported by ukl-build")
    name: str = table["name"]
    if not _DIST_NAME.match(name):
        raise ConfigError(f"{where} name: {name!r} is not a valid distribution name",
                          hint="letters, digits, '-', '_' and '.', starting and ending with a "
                               "letter or digit (PEP 508)")
    module = canonicalize_name(name).replace("-", "_")
    if not module.isidentifier():
        raise ConfigError(f"{where} name: {name!r} gives the launcher module {module!r}, "
                          "not a Python identifier", hint="start the name with a letter")
    return name, table["version"]


def _refuse(table: dict[str, Any], where: str) -> None:
    """Keys that are not PEP 621's, and the ones ukl-build cannot honour."""
    unknown = sorted(set(table) - _KNOWN)
    if unknown:
        raise ConfigError(f"{where} {unknown[0]}: not a PEP 621 key")
    if table.get("dynamic"):
        raise ConfigError(f"{where} dynamic: {table['dynamic']!r}: ukl-build computes no "
                          "metadata; give the values in [project]")
    for key, why in _REFUSED.items():
        if table.get(key):
            raise ConfigError(f"{where} {key}: not supported by the ukl-build backend ({why})",
                              hint='keep build-backend = "setuptools.build_meta" and add '
                                   "[tool.ukl-build] to ship Python code beside the image")


def _raw_metadata(table: dict[str, Any], project_dir: Path, where: str) -> dict[str, Any]:
    """The core metadata fields (packaging's RawMetadata names) of a checked table."""
    raw: dict[str, Any] = {"metadata_version": "2.1", "name": table["name"],
                           "version": table["version"]}
    if "description" in table:
        raw["summary"] = _string(table, "description", where)
    raw.update(_readme(table.get("readme"), project_dir, where))
    raw["requires_python"] = _requires_python(table.get("requires-python"), where)
    raw.update(_license(table.get("license"), project_dir, where))
    for key, person, email in (("authors", "author", "author_email"),
                               ("maintainers", "maintainer", "maintainer_email")):
        raw.update(_people(table.get(key), key, person, email, where))
    for key in ("keywords", "classifiers"):
        if key in table:
            raw[key] = _strings(table, key, where)
    if "urls" in table:
        urls = table["urls"]
        if not isinstance(urls, dict) or not all(isinstance(v, str) for v in urls.values()):
            raise ConfigError(f"{where} urls: must be a table of label = URL strings")
        raw["project_urls"] = dict(urls)
    raw.update(_requirements(table, where))
    return raw


def _string(table: dict[str, Any], key: str, where: str) -> str:
    value = table[key]
    if not isinstance(value, str):
        raise ConfigError(f"{where} {key}: must be a string")
    return value


def _strings(table: dict[str, Any], key: str, where: str) -> list[str]:
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} {key}: must be a list of strings")
    return list(value)


def _project_file(project_dir: Path, rel: str, where: str) -> Path:
    path = (project_dir / rel).resolve()
    if not path.is_relative_to(project_dir.resolve()):
        raise ConfigError(f"{where}: {rel!r} is outside the project")
    if not path.is_file():
        raise ConfigError(f"{where}: {rel!r}: no such file in {project_dir}")
    return path


def _readme(value: Any, project_dir: Path, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        value = {"file": value}
    if not isinstance(value, dict) or ("file" in value) == ("text" in value):
        raise ConfigError(f"{where} readme: a file name, or a table with file or text")
    if "file" in value:
        path = _project_file(project_dir, str(value["file"]), f"{where} readme")
        text = path.read_text(encoding=str(value.get("charset", "utf-8")))
        default_type = README_TYPES.get(path.suffix.lower())
    else:
        text, default_type = str(value["text"]), None
    content_type = value.get("content-type", default_type)
    if content_type is None:
        raise ConfigError(f"{where} readme: content-type needed "
                          f"(known suffixes: {', '.join(README_TYPES)})")
    return {"description": text, "description_content_type": str(content_type)}


def _requires_python(value: Any, where: str) -> str:
    if value is None:
        return str(LAUNCHER_PYTHON)
    if not isinstance(value, str):
        raise ConfigError(f"{where} requires-python: must be a string")
    try:
        return str(SpecifierSet(value) & LAUNCHER_PYTHON)
    except ValueError as e:
        raise ConfigError(f"{where} requires-python: {e}") from None


def _license(value: Any, project_dir: Path, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):  # an SPDX expression (PEP 639)
        return {"metadata_version": "2.4", "license_expression": value}
    if isinstance(value, dict) and set(value) in ({"text"}, {"file"}):
        if "text" in value:
            return {"license": str(value["text"])}
        path = _project_file(project_dir, str(value["file"]), f"{where} license")
        return {"license": path.read_text()}
    raise ConfigError(f"{where} license: an SPDX expression, or a table with text or file")


def _license_files(table: dict[str, Any], project_dir: Path, where: str) -> tuple[Path, ...]:
    """The files ``license-files`` matches (PEP 639), relative to the project, sorted."""
    if "license-files" not in table:
        return ()
    files: set[Path] = set()
    for pattern in _strings(table, "license-files", where):
        matched = [p for p in project_dir.glob(pattern) if p.is_file()]
        if not matched:
            raise ConfigError(f"{where} license-files: {pattern!r} matches no file")
        files.update(p.relative_to(project_dir) for p in matched)
    return tuple(sorted(files))


def _people(value: Any, key: str, person: str, email: str, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{where} {key}: must be a list of tables with name and/or email")
    names, emails = [], []
    for entry in value:
        n, e = entry.get("name"), entry.get("email")
        if e:
            emails.append(f"{n} <{e}>" if n else str(e))
        elif n:
            names.append(str(n))
        else:
            raise ConfigError(f"{where} {key}: each entry needs a name or an email")
    return {**({person: ", ".join(names)} if names else {}),
            **({email: ", ".join(emails)} if emails else {})}


def _requirements(table: dict[str, Any], where: str) -> dict[str, list[str]]:
    def parse(req: str, key: str) -> Requirement:
        try:
            return Requirement(req)
        except InvalidRequirement as e:
            raise ConfigError(f"{where} {key}: {req!r}: {e}") from None

    out: dict[str, list[str]] = {}
    requires = [str(parse(r, "dependencies"))
                for r in (_strings(table, "dependencies", where) if "dependencies" in table
                          else [])]
    extras = table.get("optional-dependencies", {})
    if not isinstance(extras, dict):
        raise ConfigError(f"{where} optional-dependencies: must be a table of lists")
    for extra in sorted(extras):
        key = f"optional-dependencies.{extra}"
        for text in _strings(extras, extra, f"{where} optional-dependencies:"):
            req = parse(text, key)
            marker = f'extra == "{canonicalize_name(extra)}"'
            req.marker = Marker(f"({req.marker}) and {marker}" if req.marker else marker)
            requires.append(str(req))  # packaging spaces a URL from its marker
        out.setdefault("provides_extra", []).append(str(canonicalize_name(extra)))
    if requires:
        out["requires_dist"] = requires
    return out

