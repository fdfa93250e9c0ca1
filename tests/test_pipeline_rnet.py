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
