"""oneDNN convolutions with weights reordered once, and the choice of R-Net's inference precision.

Why.  ``nn.Conv2d`` on CPU hands oneDNN a plain (OIHW or OHWI) weight, and oneDNN reorders it into
its blocked layout on *every* call: for ResNet-50 at batch 1 in bfloat16 those 53 reorders took
~30 % of the convolution time (ONEDNN_VERBOSE).  ``PackedConv2d`` reorders the weight once, at
preparation, and calls the same oneDNN convolution (``torch.ops.mkldnn._convolution_pointwise``, the
kernel ``torch.compile`` emits for CPU convolutions) with it.  The arithmetic is unchanged.
``pack_resnet`` goes further for a (BatchNorm-folded) ResNet-50: each convolution followed by a
ReLU computes it as oneDNN's post-op, and a bottleneck's last convolution adds the shortcut and
applies the ReLU in the same call (``PackedBottleneck``), instead of three more passes over each
activation map (separate ReLU, add, ReLU: ~3 ms of ~28 at batch 1 in bfloat16 here).

Precision.  ``"auto"`` runs the backbone in bfloat16 where the CPU computes it natively, in one of
two forms (``lower_to_bfloat16``).  With AMX tiles (Intel Xeon 4th gen and later) these packed bf16
convolutions ran 2-3x faster than float32 ones.  With AVX512-BF16 alone (AMD Zen 4) the packed form
was 2-3x *slower* than float32 (oneDNN picks a poor kernel for the pre-reordered layout there), while
plain ``nn.Conv2d`` modules cast to bfloat16 were ~1.6-2x faster (benchmarks/rnet.py on a 2-core
AMD EPYC: 18-20 against 31-33 ms per face at batch 1, 11-12 against 22-26 at batch 8), so that is
the form used without AMX (``bfloat16_form``).  Emulated bf16 is slower than float32, so "auto"
keeps float32 on CPUs with neither.

Inference only (the packed form): the packed weight is an opaque oneDNN tensor, not a parameter; a packed module
cannot be trained, saved, copied or moved to another device (prepare the original instead).
"""
from __future__ import annotations

import torch
from torch import nn

from .resnet import Bottleneck

PRECISIONS = ("auto", "float32", "bfloat16")
BFLOAT16_FORMS = ("packed", "plain")


def packing_available() -> bool:
    """True where torch has oneDNN and its prepacked-convolution ops (all x86-64 wheels)."""
    mkldnn = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_convolution_pointwise")
            and hasattr(mkldnn, "_reorder_convolution_weight"))


def bfloat16_is_native() -> bool:
    """True where this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles) and oneDNN can use it."""
    cpu = torch.cpu
    native = any(getattr(cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported",
                                                                     "_is_amx_tile_supported"))
    return native and packing_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def has_amx() -> bool:
    """True where this CPU has AMX tiles (where the packed bfloat16 form is the fast one)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def bfloat16_form() -> str:
    """The faster bfloat16 form on this CPU: "packed" with AMX tiles (measured ~0.4x float32's
    time at batch 1), else "plain" (AVX512-BF16 alone, AMD Zen 4: 0.6x at batch 1, 0.5x at 8)."""
    return "packed" if has_amx() else "plain"


def use_bfloat16(precision: str, device: torch.device) -> bool:
    """Whether R-Net's backbone runs in bfloat16: ``precision`` "bfloat16" always, "float32" never,
    "auto" on a CPU that computes bfloat16 natively (not on GPUs)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return device.type == "cpu" and bfloat16_is_native()
    return precision == "bfloat16"


def lower_to_bfloat16(resnet: nn.Module, form: str | None = None) -> nn.Module:
    """A BatchNorm-folded ``resnet.ResNet50`` in bfloat16, in place, in ``form`` (default:
    ``bfloat16_form()``): "packed" reorders the weights once for oneDNN and fuses ReLUs and adds
    (``pack_resnet``); "plain" casts the modules to bfloat16 as they are."""
    form = form or bfloat16_form()
    if form not in BFLOAT16_FORMS:
        raise ValueError(f"bfloat16 form must be one of {BFLOAT16_FORMS}, got {form!r}")
    if form == "packed":
        return pack_resnet(resnet, torch.bfloat16)
    return resnet.to(torch.bfloat16)


class PackedConv2d(nn.Module):
    """A frozen copy of ``conv`` (CPU) in ``dtype`` with its weight in oneDNN's layout; same call.
    ``relu``: the ReLU of the output computed by the same call (oneDNN post-op)."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, relu: bool = False) -> None:
        super().__init__()
        self.unary = "relu" if relu else "none"
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("PackedConv2d needs numeric zero padding")
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        weight = conv.weight.detach().to(torch.device("cpu"), dtype)
        # input_size None: a layout that serves any batch size (a batch hint changes nothing measurable)
        self.packed = torch.ops.mkldnn._reorder_convolution_weight(
            weight, self.padding, self.stride, self.dilation, self.groups, None)
        bias = conv.bias.detach().to(torch.device("cpu"), dtype) if conv.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last in, channels_last out: oneDNN's preferred activation layout
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise(x, self.packed, self.bias, self.padding, self.stride,
                                                        self.dilation, self.groups, self.unary, [], "")

    def add_relu(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """relu(conv(x) + other) in one call (a residual block's end); ``other`` is not modified."""
        x = x.contiguous(memory_format=torch.channels_last)
        other = other.contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise.binary(x, other, self.packed, self.bias, self.padding,
                                                               self.stride, self.dilation, self.groups, "add", None,
                                                               "relu", [], "")


class PackedBottleneck(nn.Module):
    """A BatchNorm-folded ``resnet.Bottleneck`` with packed convolutions and fused ReLUs and add:
    relu(conv3(relu(conv2(relu(conv1(x))))) + shortcut(x)), as the block computes."""

    def __init__(self, block: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        for name in ("bn1", "bn2", "bn3"):
            if not isinstance(getattr(block, name), nn.Identity):
                raise ValueError("PackedBottleneck needs a block with its BatchNorms folded (resnet.fold_batchnorm)")
        self.conv1 = PackedConv2d(block.conv1, dtype, relu=True)
        self.conv2 = PackedConv2d(block.conv2, dtype, relu=True)
        self.conv3 = PackedConv2d(block.conv3, dtype)
        self.downsample = None
        if block.downsample is not None:
            conv, bn = block.downsample
            if not isinstance(bn, nn.Identity):
                raise ValueError("PackedBottleneck needs a block with its BatchNorms folded (resnet.fold_batchnorm)")
            self.downsample = PackedConv2d(conv, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.conv3.add_relu(self.conv2(self.conv1(x)), shortcut)


def pack_resnet(resnet: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A BatchNorm-folded ``resnet.ResNet50``, in place: the stem's convolution with its ReLU fused
    (the separate ReLU becomes an identity) and every bottleneck a ``PackedBottleneck``."""
    if not isinstance(resnet.bn1, nn.Identity):
        raise ValueError("pack_resnet needs a ResNet with its BatchNorms folded (resnet.fold_batchnorm)")
    resnet.conv1 = PackedConv2d(resnet.conv1, dtype, relu=True)
    resnet.relu = nn.Identity()
    for stage in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for index, block in enumerate(stage):
            if isinstance(block, Bottleneck):
                stage[index] = PackedBottleneck(block, dtype)
    return resnet
