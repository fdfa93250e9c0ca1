"""The ``fit-set`` and ``video`` commands (registered by cli.py through ``add_commands``).

``deep3dface fit-set ROOT -o OUT``: ROOT is a facebank folder (``ROOT/<person>/*.jpg``) or a text
file listing photos, one a line, either ``PATH`` (the person is the photo's folder name) or
``PERSON<TAB>PATH`` (relative paths are relative to the list file).  Per person, in OUT/<person>/:

* ``neutral.obj`` (``--mesh-format ply`` or ``glb``: ``neutral.ply``, ``neutral.glb`` in metres, and
  the photos' meshes in that format too): the shared identity with zero expression, canonical pose,
  model space and unit (decimetres for the shipped models), the model's vertex order: comparable across people; its
  vertex colours are the person's one albedo (one albedo and per-photo lights: fit.shared_albedo);
* ``neutral_textured.glb`` / ``.obj`` + ``.mtl`` + ``.png``: the same mesh with the person's one
  albedo texture map fused from all used photos (deep3dface.image_set_outputs), when the model
  has a UV chart;
* per used photo the files of ``deep3dface reconstruct`` (``<stem>.json``, meshes, ``.mat``,
  overlays; see deep3dface.outputs), all with the shared identity;
* ``summary.json`` (written last): the person's files (``files``: role -> name), photos used
  (weights, residuals, pose) and dropped (reasons), the identity coefficients.

Resumable: a person whose summary.json exists is skipped (one fit-set did not write is refused and
the person counts as failed); an interrupted person is redone from the start, and the fit is
deterministic, so the files it had written are rewritten identically.  Every file is written
atomically (``export.write_output``).  Without ``--overwrite`` nothing else is
replaced: a file in the person's folder that is neither listed by a photo JSON of ours nor holds
what this run writes (someone else's) is refused before anything of that person is written, and
the person counts as failed.  ``--overwrite`` redoes the person and removes the person files of
ours that the new run does not write (the old neutral.obj after ``--mesh-format ply``).

``deep3dface video IN -o OUT``: see deep3dface.video (needs PyAV: ``pip install av``, or the ``video`` extra of a source install).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

#: keys every summary.json of fit-set's holds (cmd_fit_set's own, then IdentityReconstruction.summary()'s);
#: not "files", which came later: an earlier version's finished person is still finished
SUMMARY_KEYS = ("person", "photos", "model", "unit", "identity", "used", "dropped")


def read_sets(root: str | Path, problems: list[str] | None = None,
              notes: list[str] | None = None) -> dict[str, list[Path]]:
    """{person: photos} from a facebank folder or a list file, people and photos in sorted order;
    photo paths absolute (the JSON files record them, and a rerun from elsewhere must find them)
    but not resolved: a linked photo keeps its name (its outputs are named after it).
    A listed photo that is not a file is left out and described in ``problems`` (without that
    list, it is an error); a photo given twice for one person (by any path to the file) counts
    once (twice would double its weight), described in ``notes``."""
    from .io.images import IMAGE_SUFFIXES

    root = Path(root)
    found: dict[str, dict[Path, tuple[Path, str]]] = {}  # person -> {real file: (photo, where it was given)}
    missing: list[str] = []

    def add(person: str, photo: Path, where: str) -> None:
        given = found.setdefault(person, {})
        photo = photo.absolute()  # not os.path.abspath: it drops 'link/..' lexically
        if photo.resolve() in given:
            if notes is not None:
                notes.append(f"{where}: {photo} is given already for {person} ({given[photo.resolve()][1]}), used once")
        else:
            given[photo.resolve()] = (photo, where)

    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not files and notes is not None:  # a person left out: said, not skipped in silence
                notes.append(f"{folder}: no photos in it ({', '.join(sorted(IMAGE_SUFFIXES))}), skipped")
            for path in sorted(files):
                add(folder.name, path, str(path))
    elif root.is_file():
        try:
            text = root.read_text(encoding="utf-8-sig")  # -sig: a BOM is no part of the first path
        except UnicodeDecodeError:
            raise ValueError(f"{root}: not a folder of people or a text list file") from None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.strip().startswith("#"):
                continue
            where = f"{root} line {number}"
            person, _, path = line.rpartition("\t")  # before stripping: 'PERSON<TAB>' has no path
            path = path.strip()
            if not path:
                raise ValueError(f"{where}: no path")
            photo = Path(path).expanduser()  # a list file is not read by a shell
            photo = photo if photo.is_absolute() else root.parent / photo
            person = person.strip() or photo.parent.name
            if person in ("", ".", "..") or any(sep in person for sep in ("/", "\\")) or Path(person).is_absolute():
                raise ValueError(f"{where}: person {person!r} is not a plain folder name "
                                 "(their outputs go to OUT/<person>)")
            if not photo.is_file():
                missing.append(f"{where}: {photo}: {'not a file' if photo.exists() else 'no such file'}")
                continue
            add(person, photo, where)
    else:
        raise FileNotFoundError(f"{root}: no such folder or list file")
    if missing and problems is None:
        raise FileNotFoundError(missing[0])
    if problems is not None:
        problems.extend(missing)
    if not found and not missing:
        raise ValueError(f"{root}: no photos found (expected ROOT/<person>/*.jpg or a list file)")
    return {person: [photo for photo, _ in given.values()] for person, given in found.items()}


def cmd_fit_set(args: argparse.Namespace) -> int:
    """Reconstruct one identity per person from a facebank folder or a list of photos (see
    deep3dface.cli_sets).  Exit code: the number of people with no usable photo (counting those a
    rerun finds done) or refused for a file of someone else's in the way, plus listed photos that
    do not exist (capped at 100)."""
    from .cli import output_folder
    from .export import OutputExistsError, write_output
    from .image_set import SetConfig
    from .image_set_outputs import person_files
    from .io.images import read_image
    from .outputs import OUTPUT_KINDS, output_stems, photo_outputs, write_photo_outputs
    from .pipeline import Reconstructor

    kinds = frozenset(OUTPUT_KINDS) - (set() if args.overlay else {"overlay"})
    problems, notes = [], []
    sets = read_sets(args.root, problems, notes)
    out_root = output_folder(args.output)
    for note in notes:  # an input left out: said even with --quiet, as reconstruct's skips are
        print(f"deep3dface: warning: {note}", file=sys.stderr)
    for problem in problems:
        print(f"deep3dface: error: {problem}", file=sys.stderr)
    recon = Reconstructor(model=args.model, checkpoint=args.checkpoint, device=args.device) if sets else None
    failed = len(problems)
    done, skipped, used_total, dropped_total = 0, 0, 0, 0

    def photo_blobs(face, fit, path) -> dict[str, bytes]:
        return photo_outputs(str(path), fit.name, read_image(path), [face], recon.model_name, kinds=kinds,
                             mesh_format=args.mesh_format)[1]

    for person, photos in sets.items():
        out = out_root / person
        summary_path = out / "summary.json"
        if out.exists() and not out.is_dir():  # found now, not by a mkdir after the fit that ends the batch
            print(f"deep3dface: error: {out} exists and is not a folder (fit-set writes one folder per person); "
                  f"{person} skipped", file=sys.stderr)
            failed += 1
            continue
        if (summary_path.exists() or summary_path.is_symlink()) and not args.overwrite:
            summary = _finished_summary(summary_path, SUMMARY_KEYS,
                                        lambda s: s["person"] == person and isinstance(s["used"], list))
            if summary is None:  # someone else's file: not a sign this person is done
                print(f"deep3dface: error: {summary_path} exists but was not written by deep3dface fit-set for "
                      f"{person}; remove it or choose another -o (--overwrite replaces it); {person} skipped",
                      file=sys.stderr)
                failed += 1
                continue
            used = len(summary["used"])
            failed += used == 0
            if used == 0:  # counted in the exit code: said even with --quiet
                print(f"deep3dface: error: {person}: done already ({summary_path}), no usable photo in it "
                      "(--overwrite redoes it)", file=sys.stderr)
            else:
                _say(args, f"{person}: done already ({summary_path}, {used} photo(s) used), skipped")
                skipped += 1
            continue
        stems = output_stems(photos, out)
        try:
            if not args.overwrite:
                _refuse_person_files(out, stems)  # before the fit where it can tell already
            result = recon.reconstruct_set(photos, names=stems, config=SetConfig(), appearance=args.appearance)
            paths = [photos[stems.index(fit.name)] for fit in result.photos]
            files, blobs = {}, {}
            if result.photos:  # no photo, no identity: the mean face is nobody's neutral mesh
                files, blobs = person_files(result, lambda i: read_image(paths[i]), mesh_format=args.mesh_format)
            # a photo's files computed for the check, written as they are
            checked = {} if args.overwrite else _refuse_files_in_the_way(out, stems, blobs, result, paths, photo_blobs)
        except OutputExistsError as exc:  # nothing of this person written: the batch goes on
            print(f"deep3dface: error: {exc}; {person} skipped", file=sys.stderr)
            failed += 1
            continue
        previous = _finished_summary(summary_path, SUMMARY_KEYS, lambda s, who=person: s["person"] == who)
        if args.overwrite:  # an interrupted overwrite must not look done
            summary_path.unlink(missing_ok=True)
        for face, fit, path in zip(result.faces, result.photos, paths):
            photo_files = checked.pop(fit.name, None) or photo_blobs(face, fit, path)
            # ours, or checked above: a rerun rewrites an interrupted person's files
            write_photo_outputs(out, photo_files, overwrite=True)
        for name, data in blobs.items():
            write_output(out / name, data, overwrite=True)
        for stale in _stale_person_files(out, previous, blobs):  # before the summary marks the person done
            stale.unlink(missing_ok=True)
        summary = {"person": person, "photos": [str(p) for p in photos], "files": files, **result.summary()}
        write_output(summary_path, json.dumps(summary, indent=1).encode(), overwrite=True)
        failed += not result.photos
        done += bool(result.photos)
        used_total, dropped_total = used_total + len(result.photos), dropped_total + len(result.dropped)
        _say(args, f"{person}: {len(result.photos)} photo(s) used, {len(result.dropped)} dropped")
        for dropped in result.dropped:  # photos left out: said even with --quiet
            print(f"deep3dface: warning: {person}: dropped {dropped.name}: {dropped.reason}", file=sys.stderr)
        for note in result.notes:  # a face used unchecked: said even with --quiet
            print(f"deep3dface: warning: {person}: {note}", file=sys.stderr)
        if not result.photos:
            print(f"deep3dface: error: {person}: no usable photo, so no neutral mesh ({summary_path} says why)",
                  file=sys.stderr)
    if not args.quiet:  # the run's summary on stdout, as reconstruct's; progress and problems went to stderr
        missing = f", {len(problems)} listed photo(s) missing" if problems else ""  # also in the exit code
        print(f"{done} person(s) done ({used_total} photo(s) used, {dropped_total} dropped), {skipped} skipped, "
              f"{failed - len(problems)} failed{missing} -> {out_root}")
    return min(failed, 100)


def _refuse_person_files(out: Path, stems: list[str]) -> None:
    """A neutral mesh beside no photo JSON of ours is not from this person's run (which writes the
    photos' files first): refused before the fit."""
    from .export import OutputExistsError
    from .image_set_outputs import PERSON_FILES

    if any((out / f"{stem}.json").exists() for stem in stems):
        return
    for name in PERSON_FILES:
        if (out / name).exists():
            raise OutputExistsError(f"{out / name} exists and is not fit-set's output for {out.name} "
                                    "(--overwrite replaces it)")


def _refuse_files_in_the_way(out: Path, stems: list[str], person_blobs: dict[str, bytes], result, paths,
                             photo_blobs) -> dict[str, dict[str, bytes]]:
    """Without --overwrite: OutputExistsError for a file in the person's folder that this run would
    not write as it is (the fit is deterministic: what this person's interrupted run wrote holds
    the same bytes).  Returns {photo name: its files} computed for the check."""
    _refuse_foreign(out, person_blobs)
    existing = {p.name for p in out.iterdir()} if out.is_dir() else set()
    ours = _listed_outputs(out, stems)
    checked = {}
    for face, fit, path in zip(result.faces, result.photos, paths):
        if any(n.startswith((f"{fit.name}.", f"{fit.name}_")) for n in existing - ours):
            checked[fit.name] = photo_blobs(face, fit, path)
            _refuse_foreign(out, checked[fit.name], ours)
    return checked


def _listed_outputs(out: Path, stems: list[str]) -> set[str]:
    """Names of the files this person's photo JSONs of ours list, the JSONs included: ours to replace
    (output_stems gives a photo a stem whose JSON, where one exists, records that photo)."""
    from .outputs import listed_files

    ours = set()
    for stem in stems:
        if (out / f"{stem}.json").is_file():
            ours.update([f"{stem}.json", *listed_files(out / f"{stem}.json")])
    return ours


def _refuse_foreign(out: Path, blobs: dict[str, bytes], ours: set[str] = frozenset()) -> None:
    """OutputExistsError for the first file of ``blobs`` that exists, is not in ``ours`` and holds
    other bytes (a .mat file's 128-byte header holds a timestamp)."""
    from .export import OutputExistsError

    for name, data in blobs.items():
        path = out / name
        if name in ours or not (path.exists() or path.is_symlink()):
            continue
        skip = 128 if name.endswith(".mat") else 0
        if not path.is_file() or path.stat().st_size != len(data) or path.read_bytes()[skip:] != data[skip:]:
            raise OutputExistsError(f"{path} exists and is not fit-set's output for {out.name} "
                                    "(--overwrite replaces it)")


def _stale_person_files(out: Path, previous: dict | None, written) -> list[Path]:
    """The person files of an earlier run of ours that this run does not write: those its summary
    listed (textured files after a model without a UV chart) and neutral meshes of ours in another
    format (neutral.obj after a rerun with --mesh-format ply, finished or interrupted)."""
    from .export import our_meshes
    from .image_set_outputs import NEUTRAL, PERSON_FILES

    listed = previous.get("files") if previous else None
    names = {v for v in listed.values() if isinstance(v, str)} if isinstance(listed, dict) else set()
    names |= {path.name for path in our_meshes(out, NEUTRAL)}
    return [out / name for name in sorted((names & set(PERSON_FILES)) - set(written))]


def _finished_summary(summary_path: Path, keys: tuple[str, ...], ours: Callable[[dict], bool]) -> dict | None:
    """A finished person's or clip's summary.json as fit-set or video writes it (last, so the work
    is done): a JSON object with ``keys`` for which ``ours`` holds; None for anything else there
    (not JSON, a user's own JSON, another person's summary)."""
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return None
    if not isinstance(summary, dict) or not set(keys) <= summary.keys() or not ours(summary):
        return None
    return summary


def cmd_video(args: argparse.Namespace) -> int:
    """Track and reconstruct the largest face of a video: one identity, per-frame pose and
    expression (one-euro smoothed), frames/*.json, neutral.obj (or --mesh-format's), summary.json and
    overlay.mp4.  Exit code 1 when no frame shows a face (no neutral mesh then: the mean face is nobody's), on a
    rerun too."""
    import importlib.util

    from .cli import output_folder

    out = output_folder(args.output)  # before any work
    if importlib.util.find_spec("av") is None:
        raise ValueError("the video command needs PyAV: pip install av (from a source checkout: pip install -e '.[video]')")
    from .image_set import SetObserver
    from .morphable import load_model
    from .video import SUMMARY_KEYS as VIDEO_KEYS
    from .video import VideoConfig, reconstruct_video, write_video_outputs

    summary_path = out / "summary.json"
    if not args.overwrite:
        if summary_path.exists() or summary_path.is_symlink():
            summary = _finished_summary(summary_path, VIDEO_KEYS, lambda s: type(s["tracked"]) is int)
            if summary is None:  # someone else's file: not a sign the clip is done (exit 2, as the files below)
                raise ValueError(f"{summary_path} exists but was not written by deep3dface video; "
                                 "remove it or choose another -o (--overwrite replaces it)")
            if summary["tracked"] == 0:
                print(f"deep3dface: error: {args.input}: done already ({summary_path}), no face found in it "
                      "(--overwrite redoes it)", file=sys.stderr)
                return 1
            _say(args, f"{args.input}: done already ({summary_path}), skipped (--overwrite redoes it)")
            return 0
        from .export import MESH_FORMATS
        from .export.meshes import is_our_mesh

        # this run's mesh name whatever it holds; another format's only when ours (a user's is kept)
        meshes = [out / f"neutral.{fmt}" for fmt in MESH_FORMATS
                  if fmt == args.mesh_format or is_our_mesh(out / f"neutral.{fmt}")]
        stale = [p for p in (*meshes, out / "frames", out / "overlay.mp4") if p.exists()]
        if stale:  # checked before minutes of work, not after
            raise ValueError(f"{stale[0]} exists (an interrupted run?): --overwrite replaces it")
    model = load_model(args.model)
    observer = SetObserver.create(descriptors=False)
    result = reconstruct_video(args.input, observer, model, VideoConfig(max_frames=args.max_frames))
    write_video_outputs(result, args.input, out, overlay=args.overlay, overwrite=args.overwrite,
                        mesh_format=args.mesh_format)
    if not result.fitted:
        print(f"deep3dface: error: {args.input}: no face found in any of its {len(result.frames)} frame(s) "
              f"(so no neutral mesh; {out / 'summary.json'} says so)", file=sys.stderr)
        return 1
    if not args.quiet:  # the run's summary on stdout, as reconstruct's and fit-set's
        print(f"{args.input}: {len(result.fitted)}/{len(result.frames)} frame(s) with a face, "
              f"{sum(f.redetected for f in result.frames)} detection(s) -> {out}")
    return 0


def add_commands(sub) -> None:
    """Register ``fit-set`` and ``video`` on cli.py's subparsers."""
    from .cli import add_mesh_format, device_name, positive_int

    p = sub.add_parser("fit-set", help="one 3D identity per person from sets of photos", description=cmd_fit_set.__doc__)
    p.add_argument("root", help="ROOT/<person>/*.jpg facebank folder, or a text file listing photos, one a line: "
                                "PATH (the person is the photo's folder name) or PERSON<TAB>PATH; relative "
                                "paths are read from the list file's folder")
    p.add_argument("-o", "--output", required=True, help="output folder (one subfolder per person)")
    p.add_argument("--no-appearance", dest="appearance", action="store_false",
                   help="skip the albedo and light fit (much faster; texture maps are still baked from the photos)")
    p.add_argument("--device", type=device_name, default="cpu")
    p.add_argument("--checkpoint", default=None,
                   help="R-Net checkpoint (its --model's layout): each person's joint fit starts from the average of its answers")
    add_mesh_format(p)  # the neutral mesh's and the photos' meshes
    _common(p)
    p.set_defaults(func=cmd_fit_set)
    p = sub.add_parser("video", help="one identity and per-frame faces from a video", description=cmd_video.__doc__)
    p.add_argument("input", help="video file (anything FFmpeg reads)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--max-frames", type=positive_int, default=None, help="stop after this many frames")
    add_mesh_format(p)  # the neutral mesh's
    _common(p)  # no --device: the video path fits on the CPU (it was accepted and ignored)
    p.set_defaults(func=cmd_video)


def _common(p) -> None:
    p.add_argument("--model", default="default", help="'default' or a BFM_model_front.mat (or its folder)")
    p.add_argument("--no-overlay", dest="overlay", action="store_false", help="skip overlay images/video")
    p.add_argument("--overwrite", action="store_true", help="redo finished outputs")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and warnings about inputs left out")


def _say(args, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)

