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
    err = capsys.readouterr().err
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
    assert main(args[:-1]) == 1  # without -q the progress is back
    assert "eric: done already" in capsys.readouterr().err
