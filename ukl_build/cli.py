"""``python -m ukl_build {build,run,verify,fetch,doctor,inspect,clean,schema}``."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from ukl_build import __version__
from ukl_build.cache import Cache, check_root
from ukl_build.errors import Terminated, UklError
from ukl_build.launcher.cli import add_run_arguments, options_from_args, split_app_args
from ukl_build.launcher.manifest import load_manifest, run_defaults
from ukl_build.launcher.options import RunError
from ukl_build.launcher.run import run_image
from ukl_build.progress import terminate_as_interrupt


def _config_settings(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UklError(f"-C {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        out[key] = value
    return out


def cmd_build(ns: argparse.Namespace) -> int:
    from ukl_build.pipeline import build

    result = build(Path(ns.path), _config_settings(ns.config_setting),
                   out_dir=Path(ns.out).resolve() if ns.out else None)
    for f in result.images.files():
        print(f)
    return 0


def _image_dir_for(path: Path, ns: argparse.Namespace, tmp: Path) -> Path:
    """An image directory from a project dir (built first), an image dir, an image file or a wheel."""
    if path.is_file() and path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/_image/manifest.json")]
            if not names:
                raise UklError(f"{path}: not a ukl-build wheel (no <module>/_image/manifest.json)")
            prefix = names[0][: -len("manifest.json")]
            for n in zf.namelist():
                if n.startswith(prefix):
                    zf.extract(n, tmp)
        return tmp / prefix
    if path.is_file():
        path = path.parent
    if (path / "manifest.json").is_file():
        return path
    if (path / "pyproject.toml").is_file():
        from ukl_build.pipeline import build

        return build(path, _config_settings(ns.config_setting)).images.directory
    raise UklError(f"{path}: not a project, image directory or wheel")


def cmd_run(ns: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="ukl-run-") as tmp:
        image_dir = _image_dir_for(Path(ns.path), ns, Path(tmp))
        defaults = run_defaults(load_manifest(image_dir))
        try:
            return run_image(image_dir, options_from_args(ns, defaults))
        except RunError as e:
            raise UklError(str(e)) from None


def cmd_verify(ns: argparse.Namespace) -> int:
    from ukl_build.verify import print_report, reference_outputs, verify

    project = Path(ns.path).resolve()
    if not (project / "pyproject.toml").is_file():
        raise UklError(f"{project}: not a project (no pyproject.toml)")
    against = Path(ns.against).resolve() if ns.against is not None else None
    if against is not None:
        reference_outputs(against)  # refused before anything is made
    if ns.keep is not None:
        work = Path(ns.keep).resolve()
        if work.exists() and (not work.is_dir() or any(work.iterdir())):
            raise UklError(f"--keep {work}: exists and is not an empty directory")
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="ukl-verify-"))
    report = verify(project, _config_settings(ns.config_setting), work, sys.stderr, against)
    status = print_report(report, sys.stdout)
    if status == 0 and ns.keep is None:
        shutil.rmtree(work)  # ours: made above
    else:
        builds = "the build is" if against is not None else "both builds are"
        print(f"verify: {builds} in {work}" + (" (e.g. diffoscope on the two files)"
                                              if status else ""))
    return status


def cmd_fetch(ns: argparse.Namespace) -> int:
    from ukl_build.pipeline import prepare_tree
    from ukl_build.progress import Reporter
    from ukl_build.settings import load_settings

    settings = load_settings(Path(ns.path), _config_settings(ns.config_setting))
    with Reporter(None) as reporter:
        cache = Cache()
        check_root(cache.root)
        tree = prepare_tree(settings, cache, reporter)
    print(tree.path)
    return 0


def cmd_inspect(ns: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="ukl-inspect-") as tmp:
        path = Path(ns.path)
        if (path / "pyproject.toml").is_file() and not (path / "manifest.json").is_file():
            from ukl_build.pipeline import build_dir_of

            path = build_dir_of(path) / "image"
            if not (path / "manifest.json").is_file():
                raise UklError(f"{ns.path}: not built yet", hint=f"python -m ukl_build build {ns.path}")
        image_dir = _image_dir_for(path, ns, Path(tmp))
        manifest = load_manifest(image_dir)
    if ns.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
        return 0
    k = manifest["kernel"]
    print(f"{manifest['name']} {manifest['version']}  ({manifest['mode']} mode, {manifest['arch']})")
    print(f"  kernel   Linux {k['release']} from {k['source'].get('kind')}, "
          f"{len(k['patches'])} patches, recipes {', '.join(k['recipes'])}")
    print(f"  config   sha256 {k['config']['sha256']}")
    print(f"  app      {manifest['app']['libc']}, sha256 {manifest['app']['sha256']}")
    args = f" -- {' '.join(manifest['args'])}" if manifest["args"] else ""
    print(f"  cmdline  {manifest['cmdline']}{args}")
    for fmt, img in manifest["images"].items():
        print(f"  {fmt:8} {img['file']}  {img['size']} bytes  sha256 {img['sha256']}")
    for name, v in sorted(manifest.get("volumes", {}).items()):
        access = "read-only" if v["read_only"] else "read-write"
        print(f"  volume   {name} on {v['mount']}: {v['filesystem']}, {v['size'] >> 20} MiB "
              f"when created, {access} (run --volume {name}=FILE)")
    return 0


def cmd_clean(ns: argparse.Namespace) -> int:
    from ukl_build.pipeline import build_dir_of

    if ns.max_size is None:  # --max-size trims the cache only
        target = build_dir_of(Path(ns.path))
        if target.exists():
            shutil.rmtree(target)
            print(f"removed {target}")
    if ns.cache:
        cache = Cache()
        kept = cache.clean()
        if kept:
            print(f"{cache.root}: removed every entry but {len(kept)} that running builds "
                  "hold (and the downloads, git mirrors and compiler cache they may use):",
                  file=sys.stderr)
            for name in kept:
                print(f"    kept {name}", file=sys.stderr)
            return 1
        print(f"removed {cache.root}")
    elif ns.max_size is not None:
        from ukl_build.cache import eviction_summary
        from ukl_build.files import mib, parse_size

        try:
            limit = parse_size(ns.max_size)
        except ValueError as e:
            raise UklError(f"--max-size {e}") from None
        cache = Cache()
        removed, left = cache.evict(limit)
        for name, size in removed:
            print(f"removed {name} ({mib(size)})")
        print(f"{cache.root}: {eviction_summary(removed, left, limit)}; entries that running "
              "builds hold are kept")
    return 0


def cmd_doctor(ns: argparse.Namespace) -> int:
    from ukl_build.doctor import report

    return report(ns.install)


def cmd_schema(ns: argparse.Namespace) -> int:
    from ukl_build.settings import settings_schema_markdown

    print(settings_schema_markdown())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ukl_build",
                                description="Build a server application into a Linux unikernel.")
    p.add_argument("--version", action="version", version=f"ukl-build {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-C", "--config-setting", action="append", metavar="KEY=VALUE",
                        help="override a [tool.ukl-build] key, as with pip -C")

    b = sub.add_parser("build", help="build the project's images (prints their paths)")
    b.add_argument("path", nargs="?", default=".")
    b.add_argument("--out", help="image directory (default: PATH/build/ukl-build/image)")
    with_config(b)
    b.set_defaults(func=cmd_build)

    r = sub.add_parser("run", help="boot a project (building it if needed), image dir or wheel",
                       usage="python -m ukl_build run [PATH] [options] [-- APP ARGS...]")
    r.add_argument("path", nargs="?", default=".")
    with_config(r)
    add_run_arguments(r, {})  # defaults come from the image, once it is known
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("verify", help="build twice from empty caches in different directories "
                       "and compare every output (exit 1 at the first difference)")
    v.add_argument("path", nargs="?", default=".")
    v.add_argument("--keep", metavar="DIR",
                   help="put both builds in DIR (new or empty) and keep them")
    v.add_argument("--against", metavar="PATH",
                   help="build once and compare with PATH, an image directory or a wheel "
                        "made elsewhere (e.g. the one CI shipped)")
    with_config(v)
    v.set_defaults(func=cmd_verify)

    f = sub.add_parser("fetch", help="fetch, verify and patch the kernel source; print its path")
    f.add_argument("path", nargs="?", default=".")
    with_config(f)
    f.set_defaults(func=cmd_fetch)

    d = sub.add_parser("doctor", help="check the tools a build needs")
    d.add_argument("--install", action="store_true", help="apt-get install what is missing (root)")
    d.set_defaults(func=cmd_doctor)

    i = sub.add_parser("inspect", help="show the manifest of a build, image dir or wheel")
    i.add_argument("path", nargs="?", default=".")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect, config_setting=None)

    c = sub.add_parser("clean", help="remove the project's build dir (and with --cache, the cache)")
    c.add_argument("path", nargs="?", default=".")
    c.add_argument("--cache", action="store_true", help="remove the whole cache")
    c.add_argument("--max-size", metavar="SIZE",
                   help="only trim the cache to SIZE (5G, 500M): least recently used entries "
                        "first, never one a running build holds")
    c.set_defaults(func=cmd_clean)

    s = sub.add_parser("schema", help="print the [tool.ukl-build] reference (Markdown)")
    s.set_defaults(func=cmd_schema)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    own, app_args = split_app_args(sys.argv[1:] if argv is None else argv)
    if app_args is not None and (not own or own[0] != "run"):
        own, app_args = [*own, "--", *app_args], None  # "--" means something else there
    ns = parser().parse_args(own)
    ns.app_args = app_args
    try:
        with terminate_as_interrupt():
            return int(ns.func(ns))
    except UklError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Terminated as e:
        print(f"terminated ({signal.Signals(e.signum).name})", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
