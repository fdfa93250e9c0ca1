"""MTCNN's three networks (Zhang et al. 2016) and their weights, taken from the ``mtcnn`` package.

Parameter names follow facenet-pytorch (``conv1``, ``prelu1``, ..., ``conv4_1``/``conv4_2``,
``dense5_1``...), so its state dicts load here too.  Inputs are (B, 3, H, W) images normalised as
MTCNN was trained: ``(pixel_0_255 - 127.5) / 128``.

Weights come from the ``mtcnn`` package's ``assets/weights/{pnet,rnet,onet}.lz4``: each is a joblib
file holding a list of float32 arrays in Keras ``get_weights()`` order.  That package cannot be
imported (it needs TensorFlow), so we read the files by path with joblib.  Layout conversion:

* conv kernels HWIO -> OIHW with ``transpose(3, 2, 0, 1)``; no height/width swap;
* dense kernels (in, out) -> (out, in);
* PReLU slopes (1, 1, C) or (C,) -> (C,);
* Keras lists the box-regression head *before* the probability head (and O-Net's landmark head
  between them); the heads are returned here in that order: (box, [landmarks,] probability);
* R-Net and O-Net flatten their last feature map in (W, H, C) order (Keras ``Permute((2, 1, 3))``
  before ``Flatten``), so the torch modules permute (B, C, H, W) -> (B, W, H, C) before flattening.

Mapped this way they equal facenet-pytorch's weights bit for bit; a wrong layout shows as zero
detections or boxes shifted by several pixels (see tests/test_mtcnn.py).
"""
from __future__ import annotations

import math
from pathlib import Path

import numba
import numpy as np
import torch
from torch import nn

from deep3dface.assets import asset_file


def _conv_prelu(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k), nn.PReLU(cout)]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    # The fastest layout measured for all three nets on CPU (oneDNN), 1.2-3x faster than NCHW for
    # their thin feature maps; cuDNN handles it as well.
    return x.contiguous(memory_format=torch.channels_last)


# -- PReLU followed by max-pooling, fused -----------------------------------------------------------
# Every pooling layer of the three nets follows a PReLU.  Torch runs them as two passes, and its
# channels-last PReLU and max-pool kernels are slow on 10-64 channels: on one core, P-Net's first
# PReLU + pool over a 640x480 photo's largest pyramid level took 4.2 ms, a first fused kernel 1.0 ms;
# maxing rows before columns (below) is another 1.2-2.3x on the three nets' shapes.  Max and PReLU
# are exact operations, so the result equals torch's (tests/test_mtcnn.py compares them).
def pooled_length(n: int, kernel: int, stride: int) -> int:
    """Output length of torch's ``max_pool2d(..., ceil_mode=True)`` without padding."""
    out = math.ceil((n - kernel) / stride) + 1
    return out - 1 if (out - 1) * stride >= n else out  # the last window must start inside


@numba.njit(cache=True)
def _prelu_max_pool_nb(x, weight, kernel, stride, out):  # pragma: no cover - compiled
    """x (B, H, W, C) -> out (B, Ho, Wo, C): the max over kernel x kernel windows (stride, windows
    clipped at the far edges as in ceil mode) of prelu(x)."""
    B, H, W, C = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    n = W * C
    tiled = np.empty(n, np.float32)  # the slopes repeated along a row: the PReLU loop vectorises
    for i in range(W):
        tiled[i * C:(i + 1) * C] = weight
    column = np.empty(n, np.float32)  # max over the window's rows, per (x, channel)
    for task in range(B * Ho):
        b, oy = task // Ho, task % Ho
        y0 = oy * stride
        # Rows first, as whole contiguous rows (vectorised), then across the kernel's columns:
        # 2-3x faster than maxing every row across columns.
        row = x[b, y0].reshape(n)
        for i in range(n):
            v = row[i]
            column[i] = v if v > 0 else v * tiled[i]  # torch's PReLU
        for y in range(y0 + 1, min(y0 + kernel, H)):
            row = x[b, y].reshape(n)
            for i in range(n):
                v = row[i]
                a = v if v > 0 else v * tiled[i]
                column[i] = a if a > column[i] else column[i]
        row_out = out[b, oy].reshape(Wo * C)
        for ox in range(Wo):
            x0 = ox * stride
            for c in range(C):  # a loop: numba's slice copy costs more than the copy, per ox
                row_out[ox * C + c] = column[x0 * C + c]
            for xx in range(x0 + 1, min(x0 + kernel, W)):
                for c in range(C):
                    a, v = row_out[ox * C + c], column[xx * C + c]
                    row_out[ox * C + c] = v if v > a else a


def prelu_max_pool(x: torch.Tensor, prelu: nn.PReLU, pool: nn.MaxPool2d) -> torch.Tensor:
    """``pool(prelu(x))`` for (B, C, H, W) float32 x and a ceil-mode, unpadded max-pool layer;
    channels-last output."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.requires_grad:
        return pool(prelu(x))
    B, C, H, W = x.shape
    out = torch.empty(B, pooled_length(H, pool.kernel_size, pool.stride),
                      pooled_length(W, pool.kernel_size, pool.stride), C)
    if out.numel():
        _prelu_max_pool_nb(x.permute(0, 2, 3, 1).contiguous().numpy(), prelu.weight.detach().numpy(),
                           pool.kernel_size, pool.stride, out.numpy())
    return out.permute(0, 3, 1, 2)


class PNet(nn.Module):
    """Proposal net, fully convolutional: a 12x12 window every 2 pixels.

    Returns (box offsets (B, 4, h, w), face probability (B, 2, h, w)) with
    h = ceil((H - 2) / 2) - 4 and likewise w.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 10, 3)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _conv_prelu(10, 16, 3)
        self.conv3, self.prelu3 = _conv_prelu(16, 32, 3)
        self.conv4_1 = nn.Conv2d(32, 4, 1)
        self.conv4_2 = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = prelu_max_pool(self.conv1(_channels_last(x)), self.prelu1, self.pool1)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        # The two 1x1 heads as one (6, 32) x (32, pixels) product on the channels-last map (a view),
        # giving NCHW outputs: 3x faster than two 1x1 convolutions (torch's im2col path) and a
        # channels-last softmax over 2 channels.
        B, C, h, w = x.shape
        weight = torch.cat([self.conv4_1.weight, self.conv4_2.weight]).reshape(6, C)
        bias = torch.cat([self.conv4_1.bias, self.conv4_2.bias])
        out = torch.stack([torch.addmm(bias[:, None], weight, pixels.T)
                           for pixels in x.permute(0, 2, 3, 1).reshape(B, h * w, C)])
        return out[:, :4].view(B, 4, h, w), torch.softmax(out[:, 4:], dim=1).view(B, 2, h, w)


def _flatten_whc(x: torch.Tensor) -> torch.Tensor:
    # Keras permuted (H, W, C) to (W, H, C) before flattening; the dense weights expect that order.
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement net on 24x24 crops: (box offsets (B, 4), face probability (B, 2))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 28, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _conv_prelu(28, 48, 3)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = _conv_prelu(48, 64, 2)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 4)
        self.dense5_2 = nn.Linear(128, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = prelu_max_pool(self.conv1(_channels_last(x)), self.prelu1, self.pool1)
        x = prelu_max_pool(self.conv2(x), self.prelu2, self.pool2)
        x = self.prelu4(self.dense4(_flatten_whc(self.prelu3(self.conv3(x)))))
        return self.dense5_1(x), torch.softmax(self.dense5_2(x), dim=1)


class ONet(nn.Module):
    """Output net on 48x48 crops: (box offsets (B, 4), landmarks (B, 10) as x1..x5, y1..y5, probability (B, 2))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 32, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _conv_prelu(32, 64, 3)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = _conv_prelu(64, 64, 3)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = _conv_prelu(64, 128, 2)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 4)
        self.dense6_2 = nn.Linear(256, 10)
        self.dense6_3 = nn.Linear(256, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = prelu_max_pool(self.conv1(_channels_last(x)), self.prelu1, self.pool1)
        x = prelu_max_pool(self.conv2(x), self.prelu2, self.pool2)
        x = prelu_max_pool(self.conv3(x), self.prelu3, self.pool3)
        x = self.prelu5(self.dense5(_flatten_whc(self.prelu4(self.conv4(x)))))
        return self.dense6_1(x), self.dense6_2(x), torch.softmax(self.dense6_3(x), dim=1)


# Parameter names in Keras get_weights() order; a PReLU has one array, a conv or dense two.
_KERAS_ORDER = {
    "pnet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4_1", "conv4_2"],
    "rnet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "dense4", "prelu4", "dense5_1", "dense5_2"],
    "onet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4", "dense5", "prelu5",
             "dense6_1", "dense6_2", "dense6_3"],
}


def keras_to_state_dict(name: str, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Map the Keras weight list of net ``name`` ('pnet', 'rnet', 'onet') to torch parameter names."""
    out: dict[str, torch.Tensor] = {}
    it = iter(arrays)
    for layer in _KERAS_ORDER[name]:
        if layer.startswith("prelu"):
            out[f"{layer}.weight"] = torch.from_numpy(np.ascontiguousarray(next(it).reshape(-1)))
            continue
        kernel, bias = next(it), next(it)
        kernel = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T  # HWIO->OIHW, (in,out)->(out,in)
        out[f"{layer}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        out[f"{layer}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    if next(it, None) is not None:
        raise ValueError(f"{name}: more weight arrays than the network has parameters")
    return out


def weight_file(name: str) -> Path:
    return asset_file("mtcnn", "assets", "weights", f"{name}.lz4")


def load_keras_arrays(path: Path) -> list[np.ndarray]:
    try:
        import joblib  # only needed to read the packaged weights; lz4 decompresses them
        import lz4  # noqa: F401
    except ImportError as err:
        raise ImportError(f"reading the MTCNN weights needs joblib and lz4 ({err}); "
                          "run `pip install joblib lz4`") from None
    return [np.asarray(a, dtype=np.float32) for a in joblib.load(path)]


def pretrained_nets() -> tuple[PNet, RNet, ONet]:
    """The three nets with the ``mtcnn`` package's weights, in eval mode, on the CPU."""
    nets = []
    for name, cls in (("pnet", PNet), ("rnet", RNet), ("onet", ONet)):
        net = cls()
        net.load_state_dict(keras_to_state_dict(name, load_keras_arrays(weight_file(name))))
        nets.append(net.eval().requires_grad_(False))
    return tuple(nets)
