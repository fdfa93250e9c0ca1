"""R-Net: ResNet-50 → one linear head → ``Coefficients``, and the loader of both published checkpoints.

Input convention of ``RNet.forward``: the project's images, float RGB in [0, 1], (B, 3, 224, 224).
Each variant converts internally to what its checkpoint was trained on:

| variant | checkpoint                                       | network input         |
|---------|--------------------------------------------------|-----------------------|
| recon   | Deep3DFaceRecon_pytorch ``epoch_20.pth``         | RGB in [0, 1] (as is) |
| seed    | Deep3DFaceReconstruction-Pytorch ``params.pt``   | BGR in [0, 255]       |

Both checkpoints end in seven 1×1 convolutions applied to the 1×1 pooled feature map (id, exp, tex,
angle, gamma, xy 2, z 1). A 1×1 convolution on a 1×1 map is a matrix product, so the seven heads are
one (2048 → 257) linear layer whose rows are the heads' weights stacked in that order, with xy and
z side by side forming ``trans``. The loader stacks them (``merge_heads``); the network keeps a
single ``head`` (weight (K, 2048), bias (K,)). The flat K-vector lives only inside ``RNet``: its
public output is ``Coefficients`` (``vector`` gives the raw (B, K) tensor, for tests and .mat export).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..types import DEEP3D_LAYOUT, CoefficientLayout, Coefficients
from .packed import lower_to_bfloat16, packing_available, use_bfloat16
from .resnet import FEATURES, ResNet50, fold_batchnorm

INPUT_SIZE = 224


class CheckpointError(ValueError):
    """A checkpoint file that is not a loadable R-Net (unknown layout, missing or extra keys, unsafe pickle)."""


@dataclass(frozen=True)
class CheckpointFormat:
    """How one published checkpoint names its parts."""

    name: str            # also the RNet variant
    backbone_prefix: str  # prefix of the torchvision-named backbone keys
    heads: tuple[str, ...]  # module names of the seven 1×1 heads, in coefficient order


FORMATS = (
    CheckpointFormat("recon", "backbone.", tuple(f"final_layers.{i}" for i in range(7))),
    CheckpointFormat("seed", "", ("fcid", "fcex", "fctex", "fcangles", "fcgamma", "fcXY", "fcZ")),
)


def _to_network_input(images: torch.Tensor, variant: str) -> torch.Tensor:
    """Project images (B, 3, H, W) RGB [0, 1] → what the variant's weights expect."""
    if variant == "seed":
        return images.flip(1) * 255.0  # RGB → BGR, [0, 1] → [0, 255] (the TensorFlow original's input)
    return images


class RNet(nn.Module):
    """ResNet-50 regressing morphable-model coefficients from aligned 224×224 face crops.

    ``variant``: "recon" or "seed" (backbone flavour and input conversion, see module docstring).
    ``layout``: coefficient group sizes; the head has ``layout.total`` outputs (257 for Deep3D).
    """

    def __init__(self, variant: str = "recon", layout: CoefficientLayout = DEEP3D_LAYOUT) -> None:
        super().__init__()
        if variant not in {f.name for f in FORMATS}:
            raise ValueError(f"unknown R-Net variant {variant!r}; expected one of {[f.name for f in FORMATS]}")
        self.variant = variant
        self.layout = layout
        self.backbone = ResNet50(variant)
        self.head = nn.Linear(FEATURES, layout.total)
        #: dtype the backbone runs in (None: the head's); ``prepare_for_inference`` may lower it
        self.backbone_dtype: torch.dtype | None = None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 224, 224) RGB in [0, 1] → pooled backbone features (B, 2048)."""
        _check_images(images)
        # Convert in the caller's precision, then cast: a float32 image k/255 scales back to the exact
        # integer k of the seed's 0–255 input, so a float64 network sees the same numbers as its reference.
        x = _to_network_input(images, self.variant)
        dtype = self.head.weight.dtype
        # a bfloat16 backbone's pooled features go back to the head's float32 here
        return self.backbone(x.to(dtype=self.backbone_dtype or dtype)).to(dtype)

    def vector(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 224, 224) RGB in [0, 1] → the raw flat coefficients (B, layout.total)."""
        return self.head(self.features(images))

    def forward(self, images: torch.Tensor) -> Coefficients:
        """Images (B, 3, 224, 224) RGB in [0, 1] → Coefficients (each group (B, K))."""
        return Coefficients.from_vector(self.vector(images), self.layout)


def prepare_for_inference(model: RNet, channels_last: bool = True, precision: str = "auto",
                          bfloat16_form: str | None = None) -> RNet:
    """A faster, frozen copy of ``model`` for inference (the input model is not modified).

    BatchNorm is folded into the convolutions and gradients are switched off. ``channels_last``
    stores conv weights NHWC, the layout oneDNN's CPU convolutions prefer; the activations follow
    the weights. Outputs equal the original's to rounding (float32: ~1e-7 relative).

    ``precision`` (packed.py): "auto" runs a float32 model's backbone in bfloat16 where the CPU
    computes it natively (AMX: ~2.5x faster, AVX512-BF16: ~1.6-2x), in float32 elsewhere; "float32"
    keeps the model's own precision; "bfloat16" forces bfloat16. With AMX the bfloat16 convolution
    weights are also reordered once for oneDNN, with the ReLUs and residual adds computed by the
    convolutions (``packed.lower_to_bfloat16``; ``bfloat16_form`` "packed" or "plain" overrides the
    choice, e.g. to compare them). In bfloat16 the outputs differ from float32 by
    ~0.5 % of their largest value (tests/test_rnet.py states the limit); the head and the returned
    coefficients stay float32.
    """
    fast = fold_batchnorm(model).requires_grad_(False)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    weight = fast.head.weight
    # "auto" lowers float32 models only: a float64 model was asked for its precision
    if use_bfloat16(precision, weight.device) and (precision == "bfloat16" or weight.dtype == torch.float32):
        if weight.device.type != "cpu" or not packing_available():
            raise ValueError("bfloat16 R-Net inference needs a CPU model and torch with oneDNN")
        lower_to_bfloat16(fast.backbone, bfloat16_form)
        fast.backbone_dtype = torch.bfloat16
    return fast


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"R-Net expects (B, 3, {INPUT_SIZE}, {INPUT_SIZE}) images, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"R-Net expects float images in [0, 1], got {images.dtype}")


# ---------------------------------------------------------------- checkpoint → RNet state dict


def merge_heads(heads: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1×1 conv heads [(weight (K_i, C, 1, 1), bias (K_i,))] → linear (ΣK_i, C), (ΣK_i,)."""
    weights = [w.reshape(w.shape[0], -1) for w, _ in heads]
    return torch.cat(weights, dim=0), torch.cat([b for _, b in heads], dim=0)


def layout_from_heads(sizes: list[int]) -> CoefficientLayout:
    """Head output sizes (id, exp, tex, angle, gamma, xy, z) → the coefficient layout they produce."""
    ident, exp, tex, angle, gamma, xy, z = sizes
    if (angle, gamma, xy + z) != (3, 27, 3):
        raise ValueError(f"head sizes {sizes} do not end in angle 3, gamma 27, xy 2, z 1")
    return CoefficientLayout(id=ident, exp=exp, tex=tex)


def _strip_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def detect_format(state: dict) -> CheckpointFormat | None:
    """The format whose first head's weight is in the (prefix-stripped) state dict, or None."""
    for fmt in FORMATS:
        if f"{fmt.heads[0]}.weight" in state:
            return fmt
    return None


def _unwrap(checkpoint, path: Path) -> dict:
    """The state dict inside a checkpoint object: ``net_recon`` of a training dict, or the dict itself;
    a DataParallel ``module.`` prefix removed."""
    if isinstance(checkpoint, dict) and "net_recon" in checkpoint:
        checkpoint = checkpoint["net_recon"]
    if not isinstance(checkpoint, dict) or not all(isinstance(k, str) for k in checkpoint):
        raise CheckpointError(f"{path}: expected a state dict (or a dict with 'net_recon'), "
                              f"got {type(checkpoint).__name__}")
    return _strip_prefix(checkpoint, "module.")


def _unknown_layout_error(path: Path, state: dict) -> CheckpointError:
    expected = "; ".join(f"{f.name}: '{f.backbone_prefix}conv1.weight' + heads "
                         f"{', '.join(f.heads)}" for f in FORMATS)
    found = list(state)[:6]
    return CheckpointError(f"{path}: unknown R-Net checkpoint layout (expected a dict with 'net_recon', or keys "
                           f"of one of [{expected}]); found {len(state)} keys, first {found}")


def expected_shapes(fmt: CheckpointFormat) -> dict[str, tuple[int, ...]]:
    """Backbone key → shape, in the checkpoint's own naming (heads excluded: their sizes vary by model)."""
    with torch.device("meta"):  # shapes only: no memory, no random initialisation
        backbone = ResNet50(fmt.name)
    return {fmt.backbone_prefix + k: tuple(v.shape) for k, v in backbone.state_dict().items()}


def _head_shape_problems(state: dict, fmt: CheckpointFormat) -> list[str]:
    """Heads present must be (K, 2048[, 1, 1]) weights with (K,) biases."""
    problems = []
    for h in fmt.heads:
        weight, bias = state.get(f"{h}.weight"), state.get(f"{h}.bias")
        if weight is None or bias is None:
            continue  # reported as missing
        if weight.shape[1:] not in ((FEATURES,), (FEATURES, 1, 1)) or tuple(bias.shape) != weight.shape[:1]:
            problems.append(f"{h}: weight {tuple(weight.shape)}, bias {tuple(bias.shape)} "
                            f"(expected (K, {FEATURES}, 1, 1) and (K,))")
    return problems


def check_keys(state: dict, fmt: CheckpointFormat, path: Path) -> None:
    """Raise naming every missing, unexpected and mis-shaped key, in the checkpoint's naming.

    BatchNorm's ``num_batches_tracked`` may be absent (checkpoints from before PyTorch 0.4, or
    converted ones): inference never reads it.
    """
    shapes = expected_shapes(fmt)
    head_keys = [f"{h}.{leaf}" for h in fmt.heads for leaf in ("weight", "bias")]
    missing = [k for k in [*shapes, *head_keys] if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in shapes and k not in head_keys]
    wrong = [f"{k}: {tuple(state[k].shape)} (expected {s})" for k, s in shapes.items()
             if k in state and tuple(state[k].shape) != s]
    wrong += _head_shape_problems(state, fmt)
    problems = [f"{label} ({len(keys)}): {keys[:12]}{' ...' if len(keys) > 12 else ''}"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("wrong shapes", wrong)) if keys]
    if problems:
        raise CheckpointError(f"{path}: not a valid {fmt.name!r} R-Net checkpoint: " + "; ".join(problems))


def convert_state_dict(state: dict, fmt: CheckpointFormat) -> tuple[dict, CoefficientLayout]:
    """A checked checkpoint state dict → (RNet state dict, layout): backbone keys renamed to
    ``backbone.*``, the seven heads merged into ``head.weight`` / ``head.bias``."""
    heads = [(state[f"{h}.weight"], state[f"{h}.bias"]) for h in fmt.heads]
    layout = layout_from_heads([w.shape[0] for w, _ in heads])
    head_keys = {f"{h}.{leaf}" for h in fmt.heads for leaf in ("weight", "bias")}
    converted = {"backbone." + k[len(fmt.backbone_prefix):]: v for k, v in state.items() if k not in head_keys}
    converted["head.weight"], converted["head.bias"] = merge_heads(heads)
    return converted, layout


def _read(path: Path):
    """torch.load with ``weights_only=True``: tensors and plain containers only, never arbitrary code."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:  # named like the other checkpoint errors, not a bare "[Errno 2] ..."
        reason = "no such file" if isinstance(error, FileNotFoundError) else error.strerror or str(error)
        raise CheckpointError(f"{path}: cannot read the checkpoint ({reason})") from None
    # torch.save writes a zip archive; older checkpoints are a pickle (protocol 2+: 0x80)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither torch.save's zip archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: refused to unpickle (weights_only=True allows tensors and plain "
                              f"containers only): {_unpickling_reason(error)}") from error
    except (RuntimeError, KeyError, EOFError, ValueError) as error:  # a damaged or truncated archive
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(error).__name__}: {error})") from error


def _unpickling_reason(error: Exception) -> str:
    """The informative sentence of torch's long weights-only message (e.g. the unsupported global)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if "WeightsUnpickler error" in line), lines[0] if lines else "")
    return detail.split(" was not an allowed global")[0]


def load_rnet(path: str | Path, device=None, dtype: torch.dtype = torch.float32) -> RNet:
    """Load an R-Net checkpoint of either published format into an ``RNet`` in eval mode.

    Detects Deep3DFaceRecon_pytorch's ``{'net_recon': {backbone.*, final_layers.0-6.*}}`` (a bare
    ``net_recon`` state dict works too) and the older port's state dict with ``fcid … fcZ`` heads; a
    DataParallel ``module.`` prefix is removed. The coefficient layout is read from the head sizes.
    Raises ``CheckpointError`` for an unknown layout, missing/unexpected/mis-shaped keys, or a file
    that needs more than ``weights_only`` unpickling. Weights are read on CPU, then moved to
    ``device`` / ``dtype``.
    """
    path = Path(path)
    state = _unwrap(_read(path), path)
    fmt = detect_format(state)
    if fmt is None:
        raise _unknown_layout_error(path, state)
    check_keys(state, fmt, path)
    try:
        converted, layout = convert_state_dict(state, fmt)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from error
    model = RNet(fmt.name, layout)
    # Keys and shapes were checked above; strict=False only lets num_batches_tracked be absent.
    model.load_state_dict(converted, strict=False)
    return model.to(device=device, dtype=dtype).eval()
