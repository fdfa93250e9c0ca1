"""R-Net: both published checkpoint formats load into one network and match the reference networks.

Conformance data (../shared/conformance/rnet, see its README section 4): deterministic weights rebuilt
from each format's names and shapes, reference outputs of both reference networks on the 25 aligned
crops, in float32 and float64.
"""
from __future__ import annotations

import copy

import importlib.util
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deep3dface.nets import CheckpointError, ResNet50, RNet, load_rnet
from deep3dface.nets.packed import PackedConv2d, bfloat16_form, bfloat16_is_native, pack_resnet, packing_available
from deep3dface.nets.rnet import FORMATS, prepare_for_inference
from deep3dface.types import DEEP3D_LAYOUT, Coefficients

FORMAT_NAMES = [f.name for f in FORMATS]
HEADS = {f.name: f.heads for f in FORMATS}
#: README limits: float32 per format, float64 for both.
ATOL = {("seed", torch.float32): 5e-4, ("recon", torch.float32): 1e-5,
        ("seed", torch.float64): 1e-9, ("recon", torch.float64): 1e-9}
DTYPE_NAME = {torch.float32: "f32", torch.float64: "f64"}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rnet_dir(conformance):
    return conformance / "rnet"


@pytest.fixture(scope="module")
def reference(rnet_dir):
    with np.load(rnet_dir / "rnet_vectors.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def crops(conformance, reference) -> torch.Tensor:
    """The 25 crops in the reference's row order: float32 RGB in [0, 1], (25, 3, 224, 224)."""
    pixels = [np.asarray(Image.open(conformance / "align_crops" / f"{name}.png").convert("RGB"))
              for name in reference["crop_names"]]
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def state_dicts(rnet_dir) -> dict[str, dict]:
    """The reference state dict of each format, rebuilt with the conformance folder's own generator."""
    spec = importlib.util.spec_from_file_location("rnet_weights", rnet_dir / "rnet_weights.py")
    weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weights)
    return {name: weights.make_state_dict(json.loads((rnet_dir / f"{name}_names_shapes.json").read_text()))
            for name in FORMAT_NAMES}


def _container(name: str, state: dict):
    """What each project saves: the training dict with 'net_recon', or the bare state dict."""
    return {"net_recon": state} if name == "recon" else state


@pytest.fixture(scope="module")
def checkpoints(state_dicts, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("rnet")
    paths = {}
    for name, state in state_dicts.items():
        paths[name] = folder / f"{name}.pth"
        torch.save(_container(name, state), paths[name])
    return paths


@pytest.fixture(scope="module")
def models(checkpoints) -> dict[str, RNet]:
    return {name: load_rnet(path) for name, path in checkpoints.items()}


def _max_error(out: torch.Tensor, expected: np.ndarray) -> float:
    return float(np.abs(out.double().numpy() - expected).max())


# ---------------------------------------------------------------- conformance


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_matches_reference(name, dtype, checkpoints, crops, reference):
    model = load_rnet(checkpoints[name], dtype=dtype)
    assert model.variant == name and model.layout == DEEP3D_LAYOUT
    with torch.inference_mode():
        out = model.vector(crops)  # float32 images: the project's convention, cast by the network
    assert out.dtype == dtype and out.shape == (25, 257)
    error = _max_error(out, reference[f"{name}_out_{DTYPE_NAME[dtype]}"])
    assert error <= ATOL[name, dtype], f"{name} {dtype}: max error {error:.3g}"


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_prepared_network_matches_reference(name, models, crops, reference):
    """BatchNorm folding and channels_last keep the float32 conformance limits."""
    fast = prepare_for_inference(models[name], precision="float32")
    with torch.inference_mode():
        out = fast.vector(crops)
    error = _max_error(out, reference[f"{name}_out_f32"])
    assert error <= ATOL[name, torch.float32], f"{name}: max error {error:.3g}"
    assert all(not p.requires_grad for p in fast.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in models[name].modules()), "input model modified"


#: bfloat16 backbone vs float32, per face: max |difference| / max |float32 output| (measured on the
#: 25 conformance crops: recon 0.46 %, seed 0.49 %). R-Net only starts the fit, which refines it.
BF16_REL = 1e-2


@pytest.mark.skipif(not bfloat16_is_native(), reason="this CPU has no native bfloat16 (AVX512-BF16 / AMX)")
@pytest.mark.parametrize("name", FORMAT_NAMES)
@pytest.mark.parametrize("form", [None, "packed", "plain"], ids=["this-cpu", "packed", "plain"])
def test_bfloat16_network_stays_near_float32(name, form, models, crops):
    """The backbone in bfloat16 (forced here; "auto" picks it on exactly the CPUs this test runs
    on, see test_precision_choice), in the form this CPU gets and in both forms explicitly; the
    coefficients still come back float32."""
    fast = prepare_for_inference(models[name], precision="bfloat16", bfloat16_form=form)
    assert fast.backbone_dtype == torch.bfloat16
    has_packed = any(isinstance(m, PackedConv2d) for m in fast.modules())
    assert has_packed == ((form or bfloat16_form()) == "packed")
    with torch.inference_mode():
        low = fast.vector(crops)
        full = prepare_for_inference(models[name], precision="float32").vector(crops)
        coefficients = fast(crops[:2])
    assert low.dtype == torch.float32 and coefficients.id.dtype == torch.float32
    error = ((low - full).abs().amax(dim=1) / full.abs().amax(dim=1)).max().item()
    assert error <= BF16_REL, f"{name}: bfloat16 off by {error:.3g} of the largest coefficient"


def test_precision_choice(models, checkpoints):
    auto = prepare_for_inference(models["recon"])
    assert auto.backbone_dtype == (torch.bfloat16 if bfloat16_is_native() else None)
    assert prepare_for_inference(models["recon"], precision="float32").backbone_dtype is None
    as_f64 = prepare_for_inference(load_rnet(checkpoints["recon"], dtype=torch.float64))
    assert as_f64.backbone_dtype is None  # "auto" never lowers a float64 model
    with pytest.raises(ValueError, match="precision"):
        prepare_for_inference(models["recon"], precision="half")
    if bfloat16_is_native():
        with pytest.raises(ValueError, match="bfloat16 form"):
            prepare_for_inference(models["recon"], precision="bfloat16", bfloat16_form="fused")


@pytest.mark.skipif(not packing_available(), reason="torch without oneDNN")
@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1), (2, 3)])
def test_packed_convolution_equals_conv2d(stride, padding):
    """The once-reordered oneDNN weight computes what nn.Conv2d does (float32: to rounding), from
    NCHW or channels_last input, with or without bias."""
    torch.manual_seed(0)
    for bias in (True, False):
        conv = torch.nn.Conv2d(16, 24, 3, stride=stride, padding=padding, bias=bias).eval()
        x = torch.randn(2, 16, 15, 17)
        with torch.inference_mode():
            expected = conv(x)
            packed = PackedConv2d(conv, torch.float32)
            for layout in (torch.contiguous_format, torch.channels_last):
                torch.testing.assert_close(packed(x.contiguous(memory_format=layout)), expected,
                                           rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not packing_available(), reason="torch without oneDNN")
@pytest.mark.parametrize("variant", ["recon", "seed"])
def test_packed_resnet_with_fused_relus_and_adds_equals_the_folded_network(variant):
    """pack_resnet (ReLUs and residual adds computed by the convolutions) is the same function as
    the BatchNorm-folded ResNet it replaces, in float32 to rounding; it refuses an unfolded one."""
    from deep3dface.nets.resnet import ResNet50, fold_batchnorm

    torch.manual_seed(0)
    net = ResNet50(variant).eval()
    for module in net.modules():  # BatchNorms that do something, so a wrong fold or order shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        folded = fold_batchnorm(net)
        expected = folded(x)
        packed = pack_resnet(fold_batchnorm(net), torch.float32)
        assert not any(isinstance(m, torch.nn.ReLU) for m in packed.modules())
        torch.testing.assert_close(packed(x.contiguous(memory_format=torch.channels_last)), expected,
                                   rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    with pytest.raises(ValueError, match="folded"):
        pack_resnet(copy.deepcopy(net), torch.float32)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_forward_returns_named_coefficients(name, models, crops):
    with torch.inference_mode():
        coefficients = models[name](crops[:2])
        vector = models[name].vector(crops[:2])
    assert isinstance(coefficients, Coefficients) and coefficients.layout == DEEP3D_LAYOUT
    torch.testing.assert_close(coefficients.to_vector(), vector, rtol=0, atol=0)
    torch.testing.assert_close(coefficients.trans, vector[:, 254:257], rtol=0, atol=0)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_seven_heads_equal_one_linear_layer(name, state_dicts, checkpoints, crops):
    """The original heads, run as 1×1 convolutions on the pooled (B, 2048, 1, 1) map, equal our head."""
    model = load_rnet(checkpoints[name], dtype=torch.float64)
    with torch.inference_mode():
        pooled = model.features(crops[:3])
        ours = model.head(pooled)
        state = state_dicts[name]
        heads = [F.conv2d(pooled[:, :, None, None], state[f"{h}.weight"].double(), state[f"{h}.bias"].double())
                 for h in HEADS[name]]
    original = torch.cat([h.flatten(1) for h in heads], dim=1)  # id, exp, tex, angle, gamma, xy, z
    assert [h.shape[1] for h in heads] == [80, 64, 80, 3, 27, 2, 1]
    torch.testing.assert_close(ours, original, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- the variants' differences matter


@pytest.fixture(scope="module")
def models64(checkpoints) -> dict[str, RNet]:
    return {name: load_rnet(path, dtype=torch.float64) for name, path in checkpoints.items()}


@pytest.mark.parametrize("name", FORMAT_NAMES)
@pytest.mark.parametrize("change", ["stride_on_1x1", "pool_padding", "pool_ceil_mode", "input_channels"])
def test_each_architectural_choice_is_checked(name, change, models64, crops, reference):
    """Flipping any one choice of a variant moves the float64 outputs far past the float64 limit.

    (In float32 some are subtler than the limits: ceil mode alone only changes the seed's border
    column by ~7e-5, below its 5e-4; which is why the float64 comparison matters.)
    """
    model, images = models64[name], crops[:1]
    if change == "input_channels":
        other = model
        images = images.flip(1)  # what feeding BGR to recon, or RGB to seed, amounts to
    else:
        variant = model.backbone.variant
        value = getattr(variant, change)
        flipped = replace(variant, **{change: (1 - value) if change == "pool_padding" else not value})
        other = RNet(name)
        other.backbone = ResNet50(flipped)
        other = other.to(torch.float64)
        other.load_state_dict(model.state_dict())
        other.eval()
    with torch.inference_mode():
        error = _max_error(other.vector(images), reference[f"{name}_out_f64"][:1])
    assert error > 1000 * ATOL[name, torch.float64], f"{change} leaves {name} within {error:.3g}"


# ---------------------------------------------------------------- container variants and errors


def _params_equal(a: RNet, b: RNet) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_dataparallel_prefix_and_bare_state_dict(name, state_dicts, models, tmp_path):
    prefixed = {f"module.{k}": v for k, v in state_dicts[name].items()}
    torch.save(_container(name, prefixed), tmp_path / "dp.pth")
    assert _params_equal(load_rnet(tmp_path / "dp.pth"), models[name])
    torch.save(state_dicts[name], tmp_path / "bare.pth")  # a bare net_recon state dict loads too
    assert _params_equal(load_rnet(tmp_path / "bare.pth"), models[name])


def test_batchnorm_counters_are_optional(state_dicts, models, tmp_path):
    state = {k: v for k, v in state_dicts["seed"].items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    model = load_rnet(tmp_path / "old.pt")
    assert torch.equal(model.head.weight, models["seed"].head.weight)


def test_weights_land_on_cpu_in_the_requested_dtype(checkpoints):
    model = load_rnet(checkpoints["recon"], device="cpu", dtype=torch.float64)
    assert not model.training
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cpu", torch.float64)}


def test_unknown_layout_names_file_expected_and_found_keys(tmp_path):
    path = tmp_path / "classifier.pth"
    torch.save({"features.0.weight": torch.zeros(2, 3), "classifier.bias": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError) as info:
        load_rnet(path)
    message = str(info.value)
    for text in ("classifier.pth", "net_recon", "fcid", "final_layers.0", "features.0.weight"):
        assert text in message


def test_missing_unexpected_and_misshaped_keys_are_listed(state_dicts, tmp_path):
    state = dict(state_dicts["recon"])
    del state["backbone.layer3.2.bn2.running_mean"]
    state["backbone.fc.weight"] = torch.zeros(1000, 2048)
    state["backbone.layer1.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save({"net_recon": state}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as info:
        load_rnet(tmp_path / "broken.pth")
    message = str(info.value)
    for text in ("broken.pth", "missing", "backbone.layer3.2.bn2.running_mean", "unexpected",
                 "backbone.fc.weight", "backbone.layer1.0.conv2.weight"):
        assert text in message


def test_missing_head_is_listed(state_dicts, tmp_path):
    state = {k: v for k, v in state_dicts["seed"].items() if not k.startswith("fcgamma.")}
    torch.save(state, tmp_path / "headless.pt")
    with pytest.raises(CheckpointError, match="fcgamma.weight"):
        load_rnet(tmp_path / "headless.pt")


class _NotATensor:
    """Any custom class: unpickling it would run code chosen by the file's author."""

    def __init__(self) -> None:
        self.payload = 1


def test_pickled_objects_are_refused(state_dicts, tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"net_recon": state_dicts["recon"], "extra": _NotATensor()}, path)
    assert isinstance(torch.load(path, weights_only=False)["extra"], _NotATensor)  # the file itself is fine
    with pytest.raises(CheckpointError, match="weights_only"):
        load_rnet(path)


def test_a_file_that_is_no_checkpoint_is_a_clear_error(state_dicts, tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")  # torch.load raised a bare KeyError on this
    with pytest.raises(CheckpointError, match="notes.pth: not a PyTorch checkpoint"):
        load_rnet(text)
    truncated = tmp_path / "truncated.pth"
    torch.save({"net_recon": state_dicts["recon"]}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:4096])
    with pytest.raises(CheckpointError, match="truncated.pth: cannot read the checkpoint"):
        load_rnet(truncated)
    with pytest.raises(CheckpointError, match=r"epoch_20.pth: cannot read the checkpoint \(no such file\)"):
        load_rnet(tmp_path / "epoch_20.pth")  # was a bare "[Errno 2] No such file or directory: ..."
    with pytest.raises(CheckpointError, match="cannot read the checkpoint \\(Is a directory\\)"):
        load_rnet(tmp_path)


def test_rejects_images_of_the_wrong_shape(models):
    with pytest.raises(ValueError, match="224"):
        models["recon"](torch.zeros(1, 3, 112, 112))
