"""ukl-build as a setuptools plugin.

A setuptools project adds ``ukl-build`` to ``[build-system] requires`` and a
``[tool.ukl-build]`` table; this hook (entry point
``setuptools.finalize_distribution_options``) then adds a ``build_ukl`` step
to ``build`` that builds the images and puts them, with the launcher module,
into the project's package as ``<package>/_image/`` and ``<package>/_ukl_runner/`` (the
launcher package).
The package's own ``__main__`` can then call
``_ukl_runner.launcher_main(Path(__file__).parent / "_image")``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar

from setuptools import Command, Distribution


def _has_table() -> bool:
    try:
        with open("pyproject.toml", "rb") as f:
            return "ukl-build" in tomllib.load(f).get("tool", {})
    except (FileNotFoundError, tomllib.TOMLDecodeError):
        return False


class build_ukl(Command):  # type: ignore[misc]  # setuptools ships no types
    description = "build the ukl-build unikernel images into the package"
    user_options: ClassVar[list[tuple[str, str | None, str]]] = []

    def initialize_options(self) -> None:
        self.build_lib: str | None = None

    def finalize_options(self) -> None:
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def run(self) -> None:
        from ukl_build.pipeline import BuildOptions, build
        from ukl_build.settings import load_settings
        from ukl_build.wheel import launcher_package

        settings = load_settings(Path.cwd(), own_metadata=False)  # setuptools writes METADATA
        packages = [p for p in (self.distribution.packages or []) if "." not in p]
        module = settings.project.dist_name
        package = module if module in packages else (packages or [None])[0]
        if package is None:
            raise RuntimeError("ukl-build: the setuptools project has no package to hold the images")
        assert self.build_lib is not None
        target = Path(self.build_lib) / package
        result = build(Path.cwd(), out_dir=target / "_image",
                       options=BuildOptions(own_metadata=False))
        launcher = target / "_ukl_runner"
        launcher.mkdir(exist_ok=True)
        for name, data in launcher_package().items():
            (launcher / name).write_bytes(data)
        self.announce(f"ukl-build: images in {result.images.directory}", level=2)


def finalize_distribution_options(dist: Distribution) -> None:
    if not _has_table():
        return
    cmdclass: dict[str, Any] = dist.cmdclass
    cmdclass.setdefault("build_ukl", build_ukl)
    build_cls = dist.get_command_class("build")
    if not any(name == "build_ukl" for name, _ in build_cls.sub_commands):
        build_cls.sub_commands = [*build_cls.sub_commands, ("build_ukl", None)]
