"""The Reconstructor with an R-Net checkpoint: the network's answer seeds the fitter."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from deep3dface.align import align
from deep3dface.fit.fitter import FitConfig
from deep3dface.io.images import read_image
from deep3dface.nets import load_rnet
from deep3dface.pipeline import Reconstructor, ReconstructorConfig


@pytest.fixture(scope="module")
def checkpoint(conformance, tmp_path_factory):
    """Deep3DFaceRecon_pytorch's format, rebuilt from the conformance folder's weight generator."""
    rnet_dir = conformance / "rnet"
    spec = importlib.util.spec_from_file_location("rnet_weights", rnet_dir / "rnet_weights.py")
    weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weights)
    state = weights.make_state_dict(json.loads((rnet_dir / "recon_names_shapes.json").read_text()))
    path = tmp_path_factory.mktemp("ckpt") / "epoch_20.pth"
    torch.save({"net_recon": state}, path)
    return path


@pytest.fixture(scope="module")
def photo(faces):
    manifest = json.loads((faces / "manifest.json").read_text())
    entry = next(i for i in manifest["images"] if i["source"] == "aflw2000_3d" and abs(i["yaw_deg"]) < 20)
    return read_image(faces / entry["path"])


@pytest.mark.parametrize("precision", ["float32", "auto"])
def test_network_answer_is_used_as_is_without_fit_stages(conformance, checkpoint, photo, precision):
    """float32 gives the network's answer to rounding; "auto" (bfloat16 on CPUs that have it) within
    tests/test_rnet.py's stated limit of 1 % of the largest coefficient."""
    config = ReconstructorConfig(fit=FitConfig(landmarks=None, appearance=None, photometric=None),
                                 rnet_precision=precision)
    recon = Reconstructor(model=conformance / "tiny_bfm", checkpoint=checkpoint, config=config)
    face = recon.reconstruct(photo)[0]
    crop, _, _ = align(photo, face.detection.landmarks5)
    expected = load_rnet(checkpoint)(crop[None]).to_vector()
    got = face.coefficients.to_vector()
    assert got.dtype == torch.float32
    if precision == "float32":
        torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
    else:
        assert (got - expected).abs().max() <= 1e-2 * expected.abs().max()


def test_fit_refines_from_the_network_answer(conformance, checkpoint, photo):
    recon = Reconstructor(model=conformance / "tiny_bfm", checkpoint=checkpoint,
                          config=ReconstructorConfig(fit=FitConfig(appearance=None)))
    face = recon.reconstruct(photo)[0]
    assert torch.isfinite(face.coefficients.to_vector()).all()
    assert face.landmarks68.shape == (68, 2) and torch.isfinite(face.landmarks68).all()


def test_checkpoint_and_model_must_agree(checkpoint):
    with pytest.raises(ValueError, match="predicts coefficients"):
        Reconstructor(model="default", checkpoint=checkpoint)


def test_image_set_starts_from_the_average_of_the_network_answers(conformance, checkpoint, faces):
    """With a checkpoint, an image set's joint fit starts from the confidence-weighted average of
    R-Net's identities (the paper's image-set start): with the LM given no iterations, the set's
    identity is exactly that average, and each photo's single fit starts at its own answer."""
    from deep3dface.fit.image_set import SetFitConfig, _group_mean, photo_confidence
    from deep3dface.image_set import SetConfig

    folder = faces / "identity_face_recognition" / "obama"
    photos = [read_image(folder / name) for name in ("obama2.jpg", "obama1.jpg")]
    recon = Reconstructor(model=conformance / "tiny_bfm", checkpoint=checkpoint,
                          config=ReconstructorConfig(rnet_precision="float32"))
    frozen = SetFitConfig(iterations=0, rounds=1, yaw_gain=0.0)
    # an unfitted start explains no landmarks: keep both photos whatever their residuals
    config = SetConfig(fit=frozen, max_rms=float("inf"), max_excess=float("inf"))
    result = recon.reconstruct_set(photos, names=["a", "b"], config=config, appearance=False)
    assert result.used == ("a", "b")
    crops = torch.stack([align(photo, p.face.detection.landmarks5)[0] for photo, p in zip(photos, result.photos)])
    answers = recon.network_answers(crops)
    torch.testing.assert_close(result.fit.single.id.float(), answers.id)  # the single fits' start
    scores = torch.tensor([p.face.landmark_score for p in result.photos], dtype=torch.float64)
    weights = photo_confidence(scores, result.fit.single.angle[:, 1], result.fit.single_rms, frozen)
    average = _group_mean(answers.id.double(), weights, torch.zeros(2, dtype=torch.long))[0]
    torch.testing.assert_close(result.identity, average, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(answers.id[0], answers.id[1])  # two different answers were averaged
    # without a checkpoint the same set starts elsewhere (the mean shape's landmark fit)
    plain = Reconstructor(model=conformance / "tiny_bfm").reconstruct_set(photos, names=["a", "b"],
                                                                          config=config, appearance=False)
    assert not torch.allclose(plain.identity, result.identity)


def test_fit_set_command_takes_a_checkpoint(conformance, checkpoint, faces, tmp_path, capsys):
    """``fit-set --checkpoint`` loads it (a missing one is a bad argument) and fits as
    ``Reconstructor(checkpoint=...).reconstruct_set`` does.  (The converged joint fit hardly
    depends on where it starts: 4e-8 between the two starts here; the test above shows the start.)"""
    import shutil

    from deep3dface.cli import main

    folder = faces / "identity_face_recognition" / "obama"
    root = tmp_path / "people" / "obama"
    root.mkdir(parents=True)
    for name in ("obama2.jpg", "obama1.jpg"):
        shutil.copy(folder / name, root / name)
    model = conformance / "tiny_bfm"
    out = tmp_path / "out"
    missing = tmp_path / "missing.pth"
    assert main(["fit-set", str(tmp_path / "people"), "-o", str(out), "--model", str(model), "--checkpoint",
                 str(missing), "-q"]) == 2
    assert str(missing) in capsys.readouterr().err and not out.exists()
    assert main(["fit-set", str(tmp_path / "people"), "-o", str(out), "--model", str(model), "--checkpoint",
                 str(checkpoint), "--no-appearance", "--no-overlay", "-q"]) == 0
    summary = json.loads((out / "obama" / "summary.json").read_text())
    expected = Reconstructor(model=model, checkpoint=checkpoint).reconstruct_set(sorted(root.iterdir()),
                                                                                 appearance=False)
    assert summary["used"] and len(summary["used"]) == len(expected.used)
    torch.testing.assert_close(torch.tensor(summary["identity"], dtype=torch.float64), expected.identity,
                               rtol=0, atol=2e-6)
