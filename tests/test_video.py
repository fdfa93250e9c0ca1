"""Video: the frames of a real clip (video_3ddfa_obama) encoded into a short file, tracked and fitted."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from deep3dface.video import five_points, landmark_jitter, one_euro

av = pytest.importorskip("av")
SIZE = (640, 360)


def _encode(path, images, rate):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = *SIZE, "yuv420p", 4_000_000
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())


def _encode_still(path, frame, count):
    """A 25 fps clip of one frame repeated ``count`` times, at the frame's own size (even sides)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = *frame.size, "yuv420p", 8_000_000
        for _ in range(count):
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def frames(faces):
    paths = sorted((faces / "video_3ddfa_obama").glob("frame_*.jpg"))
    return [Image.open(p).convert("RGB").resize(SIZE, Image.BICUBIC) for p in paths]


def test_one_euro_is_still_on_a_still_signal_and_follows_a_step():
    times = np.arange(50) / 25.0
    noise = np.random.default_rng(0).normal(0, 1, (50, 1))
    assert np.std(one_euro(noise, times, beta=0.0)[10:]) < 0.5 * np.std(noise)
    step = np.r_[np.zeros(10), np.ones(40)][:, None]
    assert abs(one_euro(step, times, beta=5.0)[-1, 0] - 1) < 1e-3


def test_one_euro_speed_is_in_units_per_second(monkeypatch):
    """The cutoff follows the speed per second, whatever the frame rate: a point moving 10 units/s,
    its first step read at once (derivative cutoff huge), raises the cutoff by beta·10."""
    import deep3dface.video as video

    cutoffs, alpha = [], video._alpha
    monkeypatch.setattr(video, "_alpha", lambda dt, cutoff: cutoffs.append(float(np.max(cutoff))) or alpha(dt, cutoff))
    for rate in (25.0, 100.0):
        cutoffs.clear()
        times = np.arange(3) / rate
        one_euro(10.0 * times[:, None], times, min_cutoff=1.0, beta=0.5, derivative_cutoff=1e9)
        assert cutoffs[1] == pytest.approx(1.0 + 0.5 * 10.0, rel=1e-6)  # [0]: the derivative's own cutoff


def test_short_clips_are_smoothed_and_measured_without_error():
    """A one-frame clip is its own smoothed value; jitter needs three frames (0 below), and a
    uniformly moving point has none."""
    one = np.array([[3.0, 4.0]])
    assert np.array_equal(one_euro(one, np.zeros(1)), one) and one_euro(one, np.zeros(1)) is not one
    assert one_euro(np.zeros((0, 2)), np.zeros(0)).shape == (0, 2)
    assert landmark_jitter(np.zeros((2, 68, 2))) == 0.0
    moving = np.arange(5)[:, None, None] * np.ones((5, 68, 2))
    assert landmark_jitter(moving) == 0.0 and landmark_jitter(moving ** 2) == pytest.approx(np.sqrt(8))


def test_video_command_tracks_fits_and_writes(tmp_path, frames, capsys):
    from deep3dface.cli import main

    clip = tmp_path / "clip.mp4"
    _encode(clip, frames, rate=4)  # the frames are 7 apart in a 25 fps clip
    out = tmp_path / "out"
    assert main(["video", str(clip), "-o", str(out), "-q"]) == 0
    assert capsys.readouterr().out == ""  # -q: no summary line either
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == len(frames) and summary["tracked"] == len(frames)
    assert summary["redetections"] == 1  # the detector ran on the first frame only
    records = [json.loads((out / "frames" / f"{i:06d}.json").read_text()) for i in range(len(frames))]
    for record in records:
        fitted, detected = np.array(record["landmarks68"]), np.array(record["detected68"])
        eyes = np.linalg.norm(detected[36:42].mean(0) - detected[42:48].mean(0))
        # smoothed at 4 fps the fit lags a turning head by a few pixels; it stays on the face
        assert np.linalg.norm(fitted - detected, axis=1).mean() < 0.25 * eyes
    with av.open(str(out / "overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(frames)
    # written through a private temporary file, it still gets a plain file's permissions
    (out / "plain").write_bytes(b"")
    assert (out / "overlay.mp4").stat().st_mode == (out / "plain").stat().st_mode == (out / "summary.json").stat().st_mode
    assert (out / "neutral.obj").read_bytes().startswith(b"# deep3dface mesh, unit: decimetre")
    # a rerun without --overwrite: done already, skipped before any work; an interrupted one (no
    # summary.json) says which file is in the way before the work, not after
    before = (out / "summary.json").stat().st_mtime_ns
    assert main(["video", str(clip), "-o", str(out), "-q"]) == 0
    assert (out / "summary.json").stat().st_mtime_ns == before
    (out / "summary.json").unlink()
    assert main(["video", str(clip), "-o", str(out), "-q"]) == 2
    assert "neutral.obj exists (an interrupted run?): --overwrite replaces it" in capsys.readouterr().err


def test_a_frame_without_the_face_is_recorded_and_left_unmarked(tmp_path, frames):
    """A blank frame in the middle of a clip: the track is lost there and found again after it
    (the detector runs again), its record says no face, and its overlay frame carries no points."""
    from deep3dface.cli import main

    blank = Image.new("RGB", SIZE, (128, 128, 128))
    clip = tmp_path / "cut.mp4"
    _encode(clip, [*frames[:2], blank, *frames[2:4]], rate=4)
    out = tmp_path / "out"
    assert main(["video", str(clip), "-o", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 5 and summary["tracked"] == 4 and summary["redetections"] >= 2
    record = json.loads((out / "frames" / "000002.json").read_text())
    assert record["face"] is False and "landmarks68" not in record
    with av.open(str(out / "overlay.mp4")) as container:
        decoded = [np.asarray(f.to_image(), np.float64) for f in container.decode(video=0)]
    assert len(decoded) == 5
    green = [int(((f[..., 1] > 200) & (f[..., 0] < 130) & (f[..., 2] < 130)).sum()) for f in decoded]  # fitted points
    assert green[2] == 0 and min(green[:2] + green[3:]) > 20
    assert float(np.abs(decoded[2] - 128).max()) < 40  # the blank frame as it was


def test_a_file_that_is_no_video_is_a_clear_error(tmp_path, capsys):
    from deep3dface.cli import main

    (tmp_path / "notes.mp4").write_text("not a video")
    assert main(["video", str(tmp_path / "notes.mp4"), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "notes.mp4: not a video FFmpeg can read" in capsys.readouterr().err


def test_still_head_does_not_jitter(tmp_path, faces):
    """A still head at the frames' own 1280×720: the smoothed fit must move less than the raw one.

    (Smoothing coefficients that each lived in their own frame's crop, which the alignment's
    int casts shift by whole pixels, once made the smoothed fit jitter 5x more than the raw fit.)"""
    from deep3dface.image_set import SetObserver
    from deep3dface.morphable import load_model
    from deep3dface.video import reconstruct_video

    frame = Image.open(faces / "video_3ddfa_obama" / "frame_000.jpg").convert("RGB")
    clip = _encode_still(tmp_path / "still.mp4", frame, 12)
    result = reconstruct_video(clip, SetObserver.create(descriptors=False), load_model("default"))
    assert len(result.fitted) == 12
    # every tracked frame keeps MediaPipe's 468 points: the identity and per-frame fits use them too
    assert all(tuple(f.points.shape) == (468, 2) for f in result.frames)
    # one camera for the clip: every frame shares the alignment
    assert torch.equal(result.matrices, result.matrices[:1].expand_as(result.matrices))
    # the tracker settles within a few frames (the first box is the detector's): skip them
    raw, smoothed = result.projected(smoothed=False).numpy()[3:], result.projected(smoothed=True).numpy()[3:]
    detected = np.stack([f.landmarks68.double().numpy() for f in result.frames])[3:]
    assert landmark_jitter(raw) < 0.5 and landmark_jitter(detected) < 0.5  # the landmarker's own noise
    assert landmark_jitter(smoothed) < 0.5 * landmark_jitter(raw)
    assert np.abs(smoothed[1:] - smoothed[:-1]).max() < 0.5  # pixels of the 1280×720 frame
    # and it converges to where the raw fits are, not somewhere else
    assert np.linalg.norm(smoothed[-1] - raw.mean(0), axis=1).mean() < 0.5
    assert torch.allclose(five_points(result.frames[0].landmarks68.double())[0],
                          result.frames[0].landmarks68[36:42].double().mean(0))
    # the output 68 follow fit.annotation unless the config turns it off
    from deep3dface.camera import Camera
    from deep3dface.fit.annotation import annotation_vertices, output_keypoints
    from deep3dface.video import VideoConfig, reconstruct_tracked

    plain = reconstruct_tracked(result.frames, result.model, result.size, result.rate,
                                VideoConfig(annotation_keypoints=False))
    cameras = Camera.crop(dtype=torch.float64).for_photo(result.matrices, *result.size)
    for video, hidden in ((result, annotation_vertices(result.model)), (plain, None)):
        expected = cameras.project(output_keypoints(video.model, video.smoothed, hidden).double())
        torch.testing.assert_close(video.projected(), expected, atol=1e-4, rtol=0)


def test_clip_alignment_is_one_isotropic_median_alignment():
    from deep3dface.video import clip_alignment

    scales, shifts = torch.tensor([0.634, 0.636, 0.637]), torch.tensor([[-279.0, -62.0], [-280.0, -63.0], [-281.0, -62.0]])
    matrices = torch.eye(3, dtype=torch.float64).repeat(3, 1, 1)
    matrices[:, 0, 0], matrices[:, 1, 1] = scales, scales + 0.001
    matrices[:, :2, 2] = shifts
    clip = clip_alignment(matrices)
    assert clip.shape == (3, 3, 3) and torch.equal(clip[0], clip[2])
    assert clip[0, 0, 0] == clip[0, 1, 1] == pytest.approx(0.6365)
    assert clip[0, :2, 2].tolist() == [-280.0, -62.0]


def test_turned_head_gets_the_yaw_a_photo_gets(tmp_path, faces):
    """A still clip of a head turned 68 deg (AFLW2000-3D dev image00004): the frames' fitted yaw is
    near the single-photo pipeline's, both corrected for the landmarks' yaw compression (measured:
    clip 62-63 deg, photo 65.6; without the correction the clip said 51)."""
    from deep3dface.image_set import SetObserver
    from deep3dface.io.images import read_image
    from deep3dface.morphable import load_model
    from deep3dface.pipeline import Reconstructor
    from deep3dface.video import reconstruct_video

    frame = Image.open(faces / "aflw2000_3d" / "images" / "image00004.jpg").convert("RGB").crop((0, 0, 448, 448))
    clip = _encode_still(tmp_path / "turned.mp4", frame, 4)
    result = reconstruct_video(clip, SetObserver.create(descriptors=False), load_model("default"))
    video_yaw = np.degrees(result.raw.angle[:, 1].double().numpy())
    decoded = next(iter(av.open(str(clip)).decode(video=0))).to_image()
    decoded.save(tmp_path / "frame.png")
    photo_yaw = Reconstructor().reconstruct(read_image(tmp_path / "frame.png"))[0].angles_deg[1]
    assert abs(photo_yaw) > 60 and (np.abs(video_yaw) > 60).all()
    assert np.abs(video_yaw - photo_yaw).max() < 4.0


def _no_face_clip(tmp_path, faces, count):
    """The left of a real frame (the door behind Obama): no face in it."""
    frame = Image.open(faces / "video_3ddfa_obama" / "frame_000.jpg").convert("RGB").crop((0, 0, 480, 720))
    return _encode_still(tmp_path / "door.mp4", frame, count)


def test_video_overwrite_replaces_the_whole_result_and_keeps_other_files(tmp_path, frames, faces, capsys):
    """--overwrite leaves none of the earlier run's files that this run does not write (frames past
    --max-frames, an overlay, a neutral mesh), and never removes files that are not ours."""
    from deep3dface.cli import main

    clip = tmp_path / "clip.mp4"
    _encode(clip, frames, rate=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "neutral.ply").write_text("MINE")  # our name in another format, not our mesh: no obstacle
    assert main(["video", str(clip), "-o", str(out), "-q"]) == 0
    assert len(list((out / "frames").iterdir())) == len(frames) and (out / "overlay.mp4").is_file()
    (out / "frames" / "notes.json").write_text('{"mine": 1}')
    (out / "frames" / "000042.json").write_text('{"frame": 7}')  # our name, not our record
    (out / "mine.txt").write_text("MINE")
    args = ["video", str(clip), "-o", str(out), "--overwrite", "--max-frames", "3", "--no-overlay",
            "--mesh-format", "glb"]
    capsys.readouterr()
    assert main(args) == 0
    # not quiet: the run's summary on stdout, as reconstruct's
    assert capsys.readouterr().out == f"{clip}: 3/3 frame(s) with a face, 1 detection(s) -> {out}\n"
    assert json.loads((out / "summary.json").read_text())["files"] == {"neutral": "neutral.glb"}
    assert (out / "neutral.glb").read_bytes()[:4] == b"glTF" and not (out / "neutral.obj").exists()
    assert (out / "neutral.ply").read_text() == "MINE"
    assert sorted(p.name for p in (out / "frames").iterdir()) == [
        "000000.json", "000001.json", "000002.json", "000042.json", "notes.json"]
    assert not (out / "overlay.mp4").exists() and (out / "mine.txt").read_text() == "MINE"
    assert json.loads((out / "summary.json").read_text())["frames"] == 3
    # an overlay.mp4 that is not ours stays; so does nothing of ours this run does not write
    (out / "overlay.mp4").write_bytes(clip.read_bytes())
    assert main(["video", str(_no_face_clip(tmp_path, faces, 2)), "-o", str(out), "--overwrite", "-q"]) == 1
    assert (out / "overlay.mp4").read_bytes() == clip.read_bytes()
    assert not (out / "neutral.glb").exists()  # the earlier clip's: nobody's identity now
    assert (out / "neutral.ply").read_text() == "MINE"
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["000000.json", "000001.json", "000042.json",
                                                                  "notes.json"]


def test_video_output_that_is_a_file_is_refused_before_any_work(tmp_path, frames, capsys, monkeypatch):
    import deep3dface.video
    from deep3dface.cli import main

    def no_work(*args, **kwargs):
        raise AssertionError("the output was checked only after the work")

    monkeypatch.setattr(deep3dface.video, "reconstruct_video", no_work)
    clip = tmp_path / "clip.mp4"
    _encode(clip, frames[:2], rate=4)
    (tmp_path / "out").write_text("MINE")
    assert main(["video", str(clip), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert f"-o {tmp_path / 'out'}: exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "MINE"


def test_video_with_no_face_writes_no_neutral_mesh_and_fails_on_a_rerun(tmp_path, faces, capsys):
    from deep3dface.cli import main

    clip = _no_face_clip(tmp_path, faces, 2)
    out = tmp_path / "out"
    assert main(["video", str(clip), "-o", str(out), "-q"]) == 1
    assert "door.mp4: no face found in any of its 2 frame(s) (so no neutral mesh" in capsys.readouterr().err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "frames/000000.json", "frames/000001.json", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracked"] == 0 and summary["identity"] is None
    assert not json.loads((out / "frames" / "000000.json").read_text())["face"]
    assert main(["video", str(clip), "-o", str(out), "-q"]) == 1  # still a failure, not "done"
    assert "door.mp4: done already" in capsys.readouterr().err and not (out / "neutral.obj").exists()


def test_a_summary_json_not_written_by_video_is_refused_not_taken_as_done(tmp_path, faces, capsys, monkeypatch):
    """video took any OUT/summary.json for its own: a user's made it report 'done already ... no
    face found in it' (exit 1), or done with however many frames it said.  Now one that is not a
    JSON object with the keys write_video_outputs writes is refused before any work; --overwrite
    replaces it."""
    import deep3dface.video
    from deep3dface.cli import main
    from deep3dface.video import SUMMARY_KEYS

    def no_work(*args, **kwargs):
        raise AssertionError("a foreign summary.json was found only after the work")

    clip = _no_face_clip(tmp_path, faces, 2)
    out = tmp_path / "out"
    out.mkdir()
    mine = {"tracked": 5, "video": str(clip)}  # some of our keys, not all
    with monkeypatch.context() as patch:
        patch.setattr(deep3dface.video, "reconstruct_video", no_work)
        for text in ("my notes", json.dumps(mine), json.dumps([mine])):
            (out / "summary.json").write_text(text)
            assert main(["video", str(clip), "-o", str(out), "-q"]) == 2
            assert capsys.readouterr().err == (
                f"deep3dface: error: {out / 'summary.json'} exists but was not written by deep3dface video; "
                "remove it or choose another -o (--overwrite replaces it)\n")
            assert [p.name for p in out.iterdir()] == ["summary.json"] and (out / "summary.json").read_text() == text
    assert main(["video", str(clip), "-o", str(out), "--overwrite", "-q"]) == 1  # the door: no face
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {*SUMMARY_KEYS, "files"} and summary["tracked"] == 0 and summary["files"] == {}
    capsys.readouterr()
    assert main(["video", str(clip), "-o", str(out), "-q"]) == 1  # ours now: done already
    assert "door.mp4: done already" in capsys.readouterr().err


def test_video_takes_no_device_option_it_would_ignore(tmp_path, capsys):
    """video fits on the CPU: a --device it accepted and never used is now a usage error (exit 2);
    fit-set, which passes it on to the Reconstructor, keeps it."""
    from deep3dface.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["video", str(tmp_path / "clip.mp4"), "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert exit_.value.code == 2 and "--device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["fit-set", "--help"])
    assert exit_.value.code == 0 and "--device" in capsys.readouterr().out


def test_write_video_outputs_checks_the_mesh_format_before_removing_anything(tmp_path):
    """With overwrite=True a bad mesh_format raised only after summary.json was removed, so a
    finished clip looked unfinished; now it is refused first."""
    from deep3dface.video import write_video_outputs

    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="unknown mesh format 'bogus'"):
        write_video_outputs(None, tmp_path / "clip.mp4", tmp_path, overwrite=True, mesh_format="bogus")
    assert (tmp_path / "summary.json").read_text() == "{}"
