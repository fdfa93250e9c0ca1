"""Bottleneck ResNet-50 backbone (no classifier) with torchvision parameter names.

The two published R-Net checkpoints were trained on two slightly different ResNet-50s; both are
one class here, chosen by a ``ResNetVariant``:

* ``recon`` (sicxu/Deep3DFaceRecon_pytorch): torchvision's ResNet-50 ("ResNet v1.5"): the stride
  of each stage's first block sits on its 3×3 conv; stem max-pool k3 s2 p1.
* ``seed`` (csyuhao/Deep3DFaceReconstruction-Pytorch, a port of the Caffe/MSRA ResNet the
  original TensorFlow model used): the stride sits on the first block's 1×1 conv; stem max-pool
  k3 s2 with padding 0 and ceil mode; a 7×7 average pool at the end.

For a 224×224 input both stems give a 56×56 map and both reach a 7×7 map before pooling, so the
seed's 7×7 average pool equals a global mean: ``forward`` returns pooled (B, 2048) features.

Parameter names equal torchvision's (``conv1, bn1, layer1..4.<i>.conv1..3/bn1..3,
layer<k>.0.downsample.0/1``), so both checkpoints load with a prefix change only.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

#: Blocks per stage and bottleneck widths of ResNet-50.
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)
EXPANSION = 4
FEATURES = 512 * EXPANSION  # 2048 pooled features


@dataclass(frozen=True)
class ResNetVariant:
    """Where the two ResNet-50 flavours differ (everything else, names included, is shared)."""

    stride_on_1x1: bool     # stride of a stage's first block on conv1 (1×1) instead of conv2 (3×3)
    pool_padding: int       # stem max-pool padding (kernel 3, stride 2)
    pool_ceil_mode: bool    # stem max-pool ceil mode


VARIANTS = {
    "recon": ResNetVariant(stride_on_1x1=False, pool_padding=1, pool_ceil_mode=False),
    "seed": ResNetVariant(stride_on_1x1=True, pool_padding=0, pool_ceil_mode=True),
}


def resolve_variant(variant: str | ResNetVariant) -> ResNetVariant:
    """Look a variant up by name ("recon" or "seed"), or pass a ResNetVariant through."""
    if isinstance(variant, ResNetVariant):
        return variant
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown ResNet variant {variant!r}; expected one of {sorted(VARIANTS)}") from None


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 residual block; (B, C_in, H, W) → (B, 4·width, H/stride, W/stride)."""

    def __init__(self, in_channels: int, width: int, stride: int = 1, stride_on_1x1: bool = False) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        stride1, stride2 = (stride, 1) if stride_on_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        # Only a block that changes shape needs a projection shortcut (first block of each stage).
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        # In-place add and ReLU on this block's own fresh tensor: saves a full-size temporary.
        return self.relu(out.add_(shortcut))


def _make_stage(in_channels: int, width: int, blocks: int, stride: int, stride_on_1x1: bool) -> nn.Sequential:
    layers = [Bottleneck(in_channels, width, stride, stride_on_1x1)]
    layers += [Bottleneck(width * EXPANSION, width) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet50(nn.Module):
    """ResNet-50 feature extractor: (B, 3, H, W) → pooled (B, 2048) features.

    ``variant``: "recon" (torchvision) or "seed" (Caffe-style), see the module docstring. The
    network applies no input normalisation: the caller feeds what its checkpoint was trained on.
    """

    def __init__(self, variant: str | ResNetVariant = "recon") -> None:
        super().__init__()
        self.variant = resolve_variant(variant)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=self.variant.pool_padding,
                                    ceil_mode=self.variant.pool_ceil_mode)
        in_channels = 64
        for index, (width, blocks, stride) in enumerate(STAGES, start=1):
            stage = _make_stage(in_channels, width, blocks, stride, self.variant.stride_on_1x1)
            self.add_module(f"layer{index}", stage)
            in_channels = width * EXPANSION

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 2048, H/32, W/32) (7×7 for a 224 input)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 2048): the global mean of the final map (the seed's 7×7 pool at 224)."""
        return self.feature_map(x).mean(dim=(2, 3))


# ---------------------------------------------------------------- inference-only folding

#: (conv, batch-norm) child names that form a pair: stem and blocks, and downsample.0/1.
_CONV_BN_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("0", "1"))


def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by an eval-mode BN → one conv with bias: w·γ/σ and β + (b − μ)·γ/σ, σ = √(var + ε).

    Computed in float64 and cast back, so the fold adds no rounding beyond the final cast.
    """
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight.double() * scale[:, None, None, None])
    fused.bias.copy_(bn.bias.double() + (bias - bn.running_mean.double()) * scale)
    return fused


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (a ResNet50, or a network containing one) in eval mode, with every
    conv → BatchNorm pair folded into the conv and the BatchNorm replaced by ``nn.Identity``.

    Inference only: the running statistics become constants (training would no longer update them).
    Saves one pass over every activation map; the input module is not modified.
    """
    module = copy.deepcopy(module).eval()
    with torch.no_grad():
        for parent in list(module.modules()):
            children = dict(parent.named_children())
            for conv_name, bn_name in _CONV_BN_PAIRS:
                conv, bn = children.get(conv_name), children.get(bn_name)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    setattr(parent, conv_name, _fold_conv_bn(conv, bn))
                    setattr(parent, bn_name, nn.Identity())
    return module
