"""Video: one identity per clip, per-frame pose and expression, smoothed, tracked frame to frame.

    result = reconstruct_video("clip.mp4", observer, model)      # VideoReconstruction
    write_video_outputs(result, "clip.mp4", "out/")              # frames/*.json, overlay.mp4, ...

Needs PyAV (``pip install av``); imported only when a video is read or written.

Per clip:
1. **Tracking** (``track``): MTCNN finds the largest face in the first frame; every later frame
   reuses the box of the previous frame's landmarks (``box_from_ibug68``, the detector's box
   measured from 68 points) and its eye line as the roll.  The detector runs again only when the
   landmarker loses the face (score below ``min_score``) or no face was tracked yet.
2. **Identity**: a joint fit (``fit.image_set.fit_identity``) over up to ``identity_frames`` tracked
   frames sampled evenly: the clip's one identity.
3. **Per frame**: pose and expression with that identity fixed (``fit_landmarks_set``, one batch),
   frames turned beyond 25 deg under the yaw belief photos get (``fit.landmark_fit.yaw_prior``:
   2D landmarks see a turned head as turned less than it is), taken from each frame's own fit.
4. **Smoothing**: a one-euro filter (Casiez et al. 2012) on angles, translation and expression:
   strong low-pass on a still head (no jitter), little lag when it moves fast.  Causal, so it could
   run live; parameters in frames per second, per coefficient unit (radians, decimetres, N(0, 1)).

Points are photo pixels, corner origin, y down (DESIGN.md §2); coefficients of every frame are in
one crop camera, that of the clip's alignment (``clip_alignment``: a video has one camera);
``VideoReconstruction.projected`` images them into the frames.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .align import alignment_for
from .camera import Camera
from .detect.landmarks import box_from_ibug68, five_points, landmarks_of, roll_from_eyes
from .fit.annotation import annotation_vertices, output_keypoints
from .fit.image_set import SetFitConfig, fit_identity, fit_landmarks_set, visible_points
from .fit.landmark_fit import yaw_prior
from .fit.losses import LANDMARK_WEIGHTS
from .image_set import SetObserver, dense_points, neutral_mesh
from .morphable.model import MorphableModel
from .types import Coefficients, Mesh


@dataclass(frozen=True)
class VideoConfig:
    min_score: float = 0.5          # landmarker score below which the track is lost
    identity_frames: int = 30       # frames sampled for the identity fit
    min_cutoff: float = 1.0         # one-euro: cutoff (Hz) of a still head
    beta: float = 4.0               # one-euro: cutoff growth (Hz) per eye distance/second of head speed
    derivative_cutoff: float = 1.0  # one-euro: cutoff (Hz) of the speed estimate
    max_frames: int | None = None
    annotation_keypoints: bool = True  # output 68: hidden points where people annotate them (fit.annotation)


@dataclass(frozen=True, eq=False)
class TrackedFrame:
    index: int
    time: float                     # seconds
    landmarks68: torch.Tensor | None  # (68, 2) photo pixels, None where no face was found
    score: float
    redetected: bool                # the detector ran on this frame
    points: torch.Tensor | None = None  # (K, 2) the landmarker's own points (MediaPipe: 468), photo pixels


@dataclass(frozen=True, eq=False)
class VideoReconstruction:
    model: MorphableModel
    size: tuple[int, int]           # (W, H)
    rate: float                     # frames per second
    identity: torch.Tensor          # (K_id,)
    neutral: Mesh
    frames: tuple[TrackedFrame, ...]
    raw: Coefficients | None        # per tracked frame (rows in ``fitted`` order), unsmoothed
    smoothed: Coefficients | None
    fitted: tuple[int, ...]         # indices into ``frames`` of the frames with a face
    matrices: torch.Tensor | None   # (F, 3, 3) photo -> crop of each fitted frame (one clip-wide alignment)
    hidden_vertices: torch.Tensor | None = None  # (68,) fit.annotation's vertices; None: the plain keypoints

    def projected(self, smoothed: bool = True) -> torch.Tensor:
        """(F, 68, 2) the fitted 68 points (``fit.annotation``) in frame pixels, for the fitted frames."""
        coeffs = self.smoothed if smoothed else self.raw
        points = output_keypoints(self.model, coeffs, self.hidden_vertices).double()
        cameras = Camera.crop(dtype=torch.float64).for_photo(self.matrices, *self.size)
        return cameras.project(points)


def read_frames(path: str | Path, max_frames: int | None = None) -> Iterator[tuple[float, torch.Tensor]]:
    """(time in seconds, (3, H, W) float32 RGB in [0, 1]) for each frame of a video file."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        for count, frame in enumerate(container.decode(stream)):
            if max_frames is not None and count >= max_frames:
                break
            rgb = frame.to_ndarray(format="rgb24")
            seconds = float(frame.time) if frame.time is not None else count / float(stream.average_rate or 25)
            yield seconds, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0


def open_video(path: str | Path):
    """``av.open`` for reading, with a one-line error for a file FFmpeg cannot read as a video."""
    import av

    try:
        container = av.open(str(path))
    except av.error.FFmpegError as error:
        raise ValueError(f"{path}: not a video FFmpeg can read ({error.strerror or error})") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path}: holds no video stream")
    return container


def stream_info(path: str | Path) -> tuple[tuple[int, int], float]:
    """((width, height), frames per second) of a video's first video stream (25 where unstated)."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        return (int(stream.width), int(stream.height)), (float(rate) if rate else 25.0)


def track(frames, observer: SetObserver, min_score: float = 0.5) -> Iterator[TrackedFrame]:
    """Follow the largest face of the first frame through ``(time, image)`` frames."""
    previous = None
    for index, (seconds, image) in enumerate(frames):
        redetected = False
        marks = None
        if previous is not None:
            eyes = five_points(previous)
            roll = roll_from_eyes(eyes[0], eyes[1])
            marks = observer.landmarker(image, box_from_ibug68(previous), roll=roll)
        if marks is None or marks.score < min_score:
            redetected = True
            detections = observer.detector.detect(image)
            marks = None
            if detections:
                largest = max(detections, key=lambda d: d.eye_distance)
                marks = landmarks_of(observer.landmarker, image, largest)
        if marks is None or marks.score < min_score:
            previous = None
            yield TrackedFrame(index, seconds, None, 0.0 if marks is None else float(marks.score), redetected)
            continue
        previous = marks.ibug68.double()
        yield TrackedFrame(index, seconds, marks.ibug68.float(), float(marks.score), redetected, marks.points.float())


def reconstruct_video(path: str | Path, observer: SetObserver, model: MorphableModel,
                      config: VideoConfig = VideoConfig()) -> VideoReconstruction:
    frames = tuple(track(read_frames(path, config.max_frames), observer, config.min_score))
    size, rate = stream_info(path)
    return reconstruct_tracked(frames, model, size, rate, config)


def reconstruct_tracked(frames: tuple[TrackedFrame, ...], model: MorphableModel, size: tuple[int, int], rate: float,
                        config: VideoConfig = VideoConfig()) -> VideoReconstruction:
    """Identity, per-frame coefficients and their smoothed version from tracked frames."""
    fitted = tuple(i for i, f in enumerate(frames) if f.landmarks68 is not None)
    if not fitted:
        identity = torch.zeros(model.layout.id, dtype=torch.float64)
        return VideoReconstruction(model, size, rate, identity, neutral_mesh(model, identity), frames,
                                   None, None, (), None, None)
    marks = torch.stack([frames[i].landmarks68.double() for i in fitted])
    matrices = clip_alignment(torch.stack([alignment_for(five_points(m).numpy(), size).matrix for m in marks]))
    crop = _apply(matrices, marks)
    camera = Camera.crop(dtype=torch.float64)
    sample = np.unique(np.linspace(0, len(fitted) - 1, min(config.identity_frames, len(fitted))).round().astype(int))
    scores = torch.tensor([frames[fitted[i]].score for i in sample], dtype=torch.float64)
    dense = dense_points(model, [frames[i] for i in fitted], matrices)
    identity = fit_identity(model, crop[sample], camera, scores, config=SetFitConfig(),
                            dense=None if dense is None else dense.select(sample)).identity.double()
    count = len(fitted)
    base = LANDMARK_WEIGHTS.double().expand(count, -1)
    free = fit_landmarks_set(model, crop, camera, base, groups=torch.arange(count), iterations=20)
    start = free.to(torch.float64).replace(id=identity.expand(count, -1))  # per-frame pose to start from
    # pose and expression from the 68 and, where the landmarker gave them, its dense points
    targets, ids, weights = crop, None, base * visible_points(model, start)
    if dense is not None:
        targets, ids = dense.with_keypoints(crop, model.keypoints)
        weights = dense.with_weights(weights, start.angle[:, 1], SetFitConfig())
    # turned frames: the landmarks' yaw compression corrected as for photos, the belief taken from the
    # frames' own uncorrected fits (the identity already fitted under it would count it twice)
    raw = fit_landmarks_set(model, targets, camera, weights, torch.arange(count), iterations=20, initial=start,
                            vertex_ids=ids, update_identity=False, angle_prior=yaw_prior(free.angle[:, 1]))
    times = np.array([frames[i].time for i in fitted])
    # one cutoff per frame for every coefficient, driven by how fast the landmarks move (in eye
    # distances per second): filtering angle, translation and expression with different cutoffs
    # breaks their correlations (pitch against height) and makes the projected points jitter
    eyes = (marks[:, 36:42].mean(1) - marks[:, 42:48].mean(1)).norm(dim=1).clamp_min(1.0)
    motion = np.r_[0.0, ((marks[1:] - marks[:-1]).norm(dim=2).mean(1) / eyes[1:]).numpy()]
    params = torch.cat([raw.angle, raw.trans, raw.exp], 1).double().numpy()
    filtered = torch.from_numpy(one_euro(params, times, config.min_cutoff, config.beta, config.derivative_cutoff,
                                         motion)).to(raw.angle)
    smoothed = raw.replace(angle=filtered[:, :3], trans=filtered[:, 3:6], exp=filtered[:, 6:])
    hidden = annotation_vertices(model) if config.annotation_keypoints else None
    return VideoReconstruction(model, size, rate, identity, neutral_mesh(model, identity), frames, raw, smoothed,
                               fitted, matrices, hidden)


#: keys of the summary.json write_video_outputs writes (last: the clip is done); cli_sets tells ours by them
SUMMARY_KEYS = ("video", "width", "height", "rate", "frames", "tracked", "redetections", "model", "unit", "identity")


def write_video_outputs(result: VideoReconstruction, video: str | Path, out_dir: str | Path,
                        overlay: bool = True, overwrite: bool = False, mesh_format: str = "obj") -> list[Path]:
    """``frames/<index>.json`` per frame, ``neutral.<mesh_format>`` (``export.MESH_FORMATS``),
    ``summary.json`` (``files`` names the mesh) and ``overlay.mp4`` (green: smoothed fitted points;
    red: the landmarker's), all written atomically, the summary
    last (it marks the clip done).  A clip with no face gets no neutral mesh (the mean face is
    nobody's) and a summary with ``tracked`` 0 and no identity.  Overwriting replaces the whole
    result: the files of ours an earlier run left that this one does not write (more frames, an
    overlay, a neutral mesh) are removed; other files are never touched."""
    from .export import export_mesh, write_output
    from .outputs import mesh_format_name

    mesh_format = mesh_format_name(mesh_format)  # before anything is removed or written
    out = Path(out_dir)
    if overwrite:  # an interrupted overwrite must not look done
        (out / "summary.json").unlink(missing_ok=True)
    written, files = [], {}
    if result.fitted:
        files["neutral"] = f"neutral.{mesh_format}"
        written.append(write_output(out / files["neutral"], export_mesh(result.neutral, mesh_format), overwrite))
    position = {frame: row for row, frame in enumerate(result.fitted)}
    points = result.projected(True).numpy() if result.fitted else None
    for i, frame in enumerate(result.frames):
        record = {"frame": frame.index, "time": round(frame.time, 4), "face": frame.landmarks68 is not None,
                  "redetected": frame.redetected, "landmark_score": round(frame.score, 4)}
        if i in position:
            row = position[i]
            c = result.smoothed[row]
            record.update({
                "landmarks68": np.round(points[row], 2).tolist(),
                "detected68": np.round(frame.landmarks68.double().numpy(), 2).tolist(),
                "angles_deg": [round(math.degrees(float(a)), 3) for a in c.angle[0]],
                "trans": [round(float(v), 5) for v in c.trans[0]],
                "exp": [round(float(v), 5) for v in c.exp[0]],
                "photo_to_crop": np.round(result.matrices[row].numpy(), 6).tolist()})
        written.append(write_output(out / "frames" / f"{frame.index:06d}.json", json.dumps(record).encode(), overwrite))
    if overlay and result.fitted:
        written.append(_write_overlay(result, video, out / "overlay.mp4", points, overwrite))
    if overwrite:
        for path in set(earlier_outputs(out)) - set(written):
            path.unlink(missing_ok=True)
    summary = {"video": str(video), "width": result.size[0], "height": result.size[1], "rate": result.rate,
               "frames": len(result.frames), "tracked": len(result.fitted),
               "redetections": sum(f.redetected for f in result.frames), "model": result.model.name,
               "unit": result.model.unit,
               "identity": [round(float(v), 6) for v in result.identity] if result.fitted else None,
               "files": files}
    written.append(write_output(out / "summary.json", json.dumps(summary, indent=1).encode(), overwrite))
    return written


OVERLAY_TAG = "deep3dface video overlay"  # the overlay's container comment: marks it as ours


def earlier_outputs(out_dir: str | Path) -> list[Path]:
    """The files of ``write_video_outputs`` in a folder, recognised by name and content (a frame
    record, our mesh header, our overlay's tag), so that nothing of anyone else's is taken."""
    from .export import our_meshes

    out = Path(out_dir)
    found = []
    if (out / "frames").is_dir():
        for path in sorted((out / "frames").glob("[0-9][0-9][0-9][0-9][0-9][0-9].json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and record.get("frame") == int(path.stem) and "landmark_score" in record:
                found.append(path)
    found += our_meshes(out, "neutral")
    if (out / "overlay.mp4").is_file():
        try:
            with open_video(out / "overlay.mp4") as container:
                if container.metadata.get("comment") == OVERLAY_TAG:
                    found.append(out / "overlay.mp4")
        except ValueError:  # not a video FFmpeg reads: not ours
            pass
    return found


def _write_overlay(result: VideoReconstruction, video, path: Path, points: np.ndarray, overwrite: bool) -> Path:
    import os
    import tempfile

    import av
    from PIL import Image, ImageDraw

    from .export import give_default_mode, refuse_existing

    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    position = {frame: row for row, frame in enumerate(result.fitted)}
    width, height = (result.size[0] // 2) * 2, (result.size[1] // 2) * 2  # yuv420p needs even sizes
    try:
        with av.open(tmp, "w", format="mp4") as container:
            container.metadata["comment"] = OVERLAY_TAG
            stream = container.add_stream("mpeg4", rate=round(result.rate) or 25)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.bit_rate = 4_000_000
            for i, (_, image) in enumerate(read_frames(video, len(result.frames))):
                canvas = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
                draw = ImageDraw.Draw(canvas)
                if i in position:
                    radius = max(1.5, width / 500)
                    for colour, pts in (((255, 60, 60), result.frames[i].landmarks68.numpy()),
                                        ((60, 255, 60), points[position[i]])):
                        for x, y in pts:
                            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
                frame = av.VideoFrame.from_image(canvas.crop((0, 0, width, height)))
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        give_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- pure functions --------------------------------------------------------------------------------
def clip_alignment(matrices: torch.Tensor) -> torch.Tensor:
    """(F, 3, 3) per-frame photo -> crop alignments -> (F, 3, 3) copies of one clip-wide alignment:
    the median scale and translation of the frames'.

    A video has one camera, so every frame is fitted in one crop camera.  Per-frame alignments
    would give each frame its own focal length and principal point, and they move in whole crop
    pixels (the reference's int32 casts): a still head's crop jumps by a pixel from frame to frame,
    each frame's translation compensates the jump, and coefficients smoothed across frames no longer
    match any frame's camera (a smoothed still clip jittered 5x more than the raw fit)."""
    median = matrices.median(dim=0).values
    scale = 0.5 * (median[0, 0] + median[1, 1])  # alignments are isotropic up to the int casts
    clip = torch.tensor([[scale, 0.0, median[0, 2]], [0.0, scale, median[1, 2]], [0.0, 0.0, 1.0]],
                        dtype=matrices.dtype)
    return clip.expand(len(matrices), 3, 3).clone()


def one_euro(values: np.ndarray, times: np.ndarray, min_cutoff: float = 1.0, beta: float = 0.3,
             derivative_cutoff: float = 1.0, motion: np.ndarray | None = None) -> np.ndarray:
    """One-euro filter (Casiez et al. 2012) along axis 0 of (T, D) values sampled at ``times`` (s).

    Each step's cutoff is ``min_cutoff + beta·|smoothed speed|``: a still signal is low-passed at
    ``min_cutoff`` Hz, a fast one follows with little lag.  The speed is each value's own, or, with
    ``motion`` (T,) (the change from the previous sample, any unit), one shared by all values."""
    out = np.array(values, dtype=np.float64, copy=True)
    if len(out) < 2:
        return out
    speed = np.zeros_like(out[0]) if motion is None else 0.0
    for t in range(1, len(out)):
        dt = max(float(times[t] - times[t - 1]), 1e-6)
        a_d = _alpha(dt, derivative_cutoff)
        change = (values[t] - out[t - 1]) if motion is None else motion[t]
        speed = a_d * change / dt + (1 - a_d) * speed
        a = _alpha(dt, min_cutoff + beta * np.abs(speed))
        out[t] = a * values[t] + (1 - a) * out[t - 1]
    return out


def _alpha(dt: float, cutoff):
    tau = 1.0 / (2 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


def _apply(matrices: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(F, 3, 3) affine maps applied to (F, K, 2) points."""
    return points @ matrices[:, :2, :2].transpose(1, 2) + matrices[:, None, :2, 2]


def landmark_jitter(points: np.ndarray) -> float:
    """Mean norm of the second difference of (T, K, 2) points (px / frame²): 0 for a still or
    uniformly moving point, large for frame-to-frame jitter."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 3:
        return 0.0
    return float(np.linalg.norm(points[2:] - 2 * points[1:-1] + points[:-2], axis=-1).mean())


__all__ = ["OVERLAY_TAG", "TrackedFrame", "VideoConfig", "VideoReconstruction", "clip_alignment", "earlier_outputs",
           "five_points", "landmark_jitter", "one_euro", "read_frames", "reconstruct_tracked", "reconstruct_video",
           "track", "write_video_outputs"]
