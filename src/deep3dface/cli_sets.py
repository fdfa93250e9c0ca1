"""The ``fit-set`` and ``video`` commands (registered by cli.py through ``add_commands``).

``deep3dface fit-set ROOT -o OUT``: ROOT is a facebank folder (``ROOT/<person>/*.jpg``) or a text
file listing photos, one a line, either ``PATH`` (the person is the photo's folder name) or
``PERSON<TAB>PATH`` (relative paths are relative to the list file).  Per person, in OUT/<person>/:

* ``neutral.obj``: the shared identity with zero expression, canonical pose, model space and unit
  (decimetres for the shipped models), the model's vertex order: comparable across people; its
  vertex colours are the person's one albedo (one albedo and per-photo lights: fit.shared_albedo);
* ``neutral_textured.glb`` / ``.obj`` + ``.mtl`` + ``.png``: the same mesh with the person's one
  albedo texture map fused from all used photos (deep3dface.image_set_outputs), when the model
  has a UV chart;
* per used photo the files of ``deep3dface reconstruct`` (``<stem>.json``, meshes, ``.mat``,
  overlays; see deep3dface.outputs), all with the shared identity;
* ``summary.json`` (written last): the person's files (``files``: role -> name), photos used
  (weights, residuals, pose) and dropped (reasons), the identity coefficients.

Resumable: a person whose summary.json exists is skipped; an interrupted person is redone from the
start, and the fit is deterministic, so the files it had written are rewritten identically.  Every
file is written atomically (``export.write_output``).

``deep3dface video IN -o OUT``: see deep3dface.video (needs PyAV: ``pip install deep3dface[video]``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

def read_sets(root: str | Path) -> dict[str, list[Path]]:
    """{person: photos} from a facebank folder or a list file, people and photos in sorted order;
    photo paths resolved (the JSON files record them, and a rerun from elsewhere must find them)."""
    from .io.images import IMAGE_SUFFIXES

    root = Path(root)
    sets: dict[str, list[Path]] = {}
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            photos = sorted(p.resolve() for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if photos:
                sets[folder.name] = photos
    elif root.is_file():
        for number, line in enumerate(root.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            person, _, path = line.rpartition("\t")
            photo = Path(path) if Path(path).is_absolute() else root.parent / path
            person = person.strip() or photo.parent.name
            if person in ("", ".", "..") or any(sep in person for sep in ("/", "\\")) or Path(person).is_absolute():
                raise ValueError(f"{root} line {number}: person {person!r} is not a plain folder name "
                                 "(their outputs go to OUT/<person>)")
            sets.setdefault(person, []).append(photo.resolve())
    else:
        raise FileNotFoundError(f"{root}: no such folder or list file")
    if not sets:
        raise ValueError(f"{root}: no photos found (expected ROOT/<person>/*.jpg or a list file)")
    return sets


def cmd_fit_set(args: argparse.Namespace) -> int:
    """Reconstruct one identity per person from a facebank folder or a list of photos (see
    deep3dface.cli_sets).  Exit code: the number of people with no usable photo (capped at 100),
    counting those a rerun finds done."""
    from .cli import output_folder
    from .export import write_output
    from .image_set import SetConfig
    from .image_set_outputs import person_files
    from .io.images import read_image
    from .outputs import OUTPUT_KINDS, output_stems, photo_outputs, write_photo_outputs
    from .pipeline import Reconstructor

    kinds = frozenset(OUTPUT_KINDS) - (set() if args.overlay else {"overlay"})
    sets = read_sets(args.root)
    out_root = output_folder(args.output)
    recon = Reconstructor(model=args.model, device=args.device)
    failed = 0
    for person, photos in sets.items():
        out = out_root / person
        summary_path = out / "summary.json"
        if summary_path.exists() and not args.overwrite:
            used = _used_photos(summary_path)
            failed += used == 0
            _say(args, f"{person}: done already ({summary_path}, {used} photo(s) used), skipped")
            continue
        stems = output_stems(photos, out)
        result = recon.reconstruct_set(photos, names=stems, config=SetConfig(), appearance=args.appearance)
        paths = [photos[stems.index(fit.name)] for fit in result.photos]
        for face, fit, path in zip(result.faces, result.photos, paths):
            _, blobs = photo_outputs(str(path), fit.name, read_image(path), [face], recon.model_name,
                                     kinds=kinds)
            write_photo_outputs(out, blobs, overwrite=True)  # a rerun rewrites an interrupted person's files
        files: dict[str, str] = {}
        if result.photos:  # no photo, no identity: the mean face is nobody's neutral mesh
            files, blobs = person_files(result, lambda i: read_image(paths[i]))
            for name, data in blobs.items():
                write_output(out / name, data, overwrite=True)
        summary = {"person": person, "photos": [str(p) for p in photos], "files": files, **result.summary()}
        write_output(summary_path, json.dumps(summary, indent=1).encode(), overwrite=True)
        failed += not result.photos
        _say(args, f"{person}: {len(result.photos)} photo(s) used, {len(result.dropped)} dropped"
                   + "".join(f"\n  dropped {d.name}: {d.reason}" for d in result.dropped))
    return min(failed, 100)


def _used_photos(summary_path: Path) -> int:
    """How many photos a finished person's summary.json says were used (0 when unreadable)."""
    try:
        return len(json.loads(summary_path.read_text()).get("used", []))
    except (OSError, ValueError, AttributeError):
        return 0


def cmd_video(args: argparse.Namespace) -> int:
    """Track and reconstruct the largest face of a video: one identity, per-frame pose and
    expression (one-euro smoothed), frames/*.json, neutral.obj, summary.json and overlay.mp4."""
    import importlib.util

    if importlib.util.find_spec("av") is None:
        raise ValueError("the video command needs PyAV: pip install 'deep3dface[video]' (or pip install av)")
    from .image_set import SetObserver
    from .morphable import load_model
    from .video import VideoConfig, reconstruct_video, write_video_outputs

    out = Path(args.output)
    if not args.overwrite:
        if (out / "summary.json").exists():
            _say(args, f"{args.input}: done already ({out / 'summary.json'}), skipped (--overwrite redoes it)")
            return 0
        stale = [p for p in (out / "neutral.obj", out / "frames", out / "overlay.mp4") if p.exists()]
        if stale:  # checked before minutes of work, not after
            raise ValueError(f"{stale[0]} exists (an interrupted run?): --overwrite replaces it")
    model = load_model(args.model)
    observer = SetObserver.create(descriptors=False)
    result = reconstruct_video(args.input, observer, model, VideoConfig(max_frames=args.max_frames))
    write_video_outputs(result, args.input, args.output, overlay=args.overlay, overwrite=args.overwrite)
    _say(args, f"{args.input}: {len(result.fitted)}/{len(result.frames)} frame(s) with a face, "
               f"{sum(f.redetected for f in result.frames)} detection(s) -> {args.output}")
    return 0 if result.fitted else 1


def add_commands(sub) -> None:
    """Register ``fit-set`` and ``video`` on cli.py's subparsers."""
    from .cli import positive_int

    p = sub.add_parser("fit-set", help="one 3D identity per person from sets of photos", description=cmd_fit_set.__doc__)
    p.add_argument("root", help="ROOT/<person>/*.jpg facebank folder, or a text file listing photos")
    p.add_argument("-o", "--output", required=True, help="output folder (one subfolder per person)")
    p.add_argument("--no-appearance", dest="appearance", action="store_false",
                   help="skip the albedo and light fit (much faster; texture maps are still baked from the photos)")
    _common(p)
    p.set_defaults(func=cmd_fit_set)
    p = sub.add_parser("video", help="one identity and per-frame faces from a video", description=cmd_video.__doc__)
    p.add_argument("input", help="video file (anything FFmpeg reads)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--max-frames", type=positive_int, default=None, help="stop after this many frames")
    _common(p)
    p.set_defaults(func=cmd_video)


def _common(p) -> None:
    from .cli import device_name

    p.add_argument("--model", default="default", help="'default' or a BFM_model_front.mat (or its folder)")
    p.add_argument("--device", type=device_name, default="cpu")
    p.add_argument("--no-overlay", dest="overlay", action="store_false", help="skip overlay images/video")
    p.add_argument("--overwrite", action="store_true", help="redo finished outputs")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")


def _say(args, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)

