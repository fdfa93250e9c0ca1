"""Reading photos: any file Pillow can open, to RGB, with EXIF orientation applied.

Conventions (the project's, DESIGN.md §2):

* inside the library an image is float32 RGB, (3, H, W) per image or (B, 3, H, W), values in [0, 1];
* uint8 (H, W, 3) RGB exists only at the I/O edge (``read_image_uint8``, and the crop code that
  resizes with Pillow);
* no BGR anywhere; pixel (row i, column j) is the image's top-left-origin pixel after EXIF rotation.

What a file becomes:

* EXIF orientation (tag 274) is applied (``ImageOps.exif_transpose``), so a phone photo stands up;
* grey (1, L, I;16, I, F) is replicated to three channels; a palette (P) is expanded; CMYK,
  YCbCr, LAB and HSV go through Pillow's conversion to RGB;
* 16-bit data (I;16*, and I, read as 16-bit, as 16-bit PNGs open) scale 65535 -> 1.0; float grey
  (F, e.g. a 32-bit float TIFF) is taken on Pillow's 0-255 scale, unless no value exceeds 1: then
  it is a 0-1 image (on the 0-255 scale it would be black, and no face would be found); all are
  clipped to [0, 1];
* transparency (RGBA, LA, PA, P or L or RGB with a transparent colour) is composited **on black**:
  colour x alpha.  Black because the aligner pads outside the photo with black, so a cut-out
  portrait and the padding around it look alike to the networks; the reference instead drops alpha
  (``convert('RGB')``), which keeps whatever colour transparent pixels happen to store.

HEIC/HEIF (iPhone photos) read through the ``pillow-heif`` plugin when it is installed (an optional
dependency, registered with Pillow at the first such file); without it such a file fails with that advice.

Any failure raises ``ImageReadError`` (a ValueError) naming the file and the reason.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import BinaryIO, ContextManager, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]
#: the file suffixes the commands take for photos when they scan folders: a folder of .jfif (web
#: downloads), .avif or .heic/.heif (iPhone) photos was skipped without a word; a photo Pillow cannot
#: read here (HEIC without the pillow-heif plugin) now fails by name, with what it needs
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif",
                            ".ppm", ".pgm", ".avif", ".heic", ".heif"})
_HEIF_SUFFIXES = (".heic", ".heif")

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageReadError(ValueError):
    """An image could not be read; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path
        self.reason = reason


def _name(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, np.ndarray):
        return "<array>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "<PIL image>"
    return getattr(source, "name", None) or "<bytes>"


def _stream(source: ImageSource, name: str) -> ContextManager[BinaryIO]:
    """A readable binary stream for a path or bytes (closed afterwards), or the caller's own stream
    (left open)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()  # "~/photo.jpg" from Python: the shell expands it on the command line
        if "://" in str(source) and not path.exists():  # nothing is fetched from the network
            raise ImageReadError(name, "a URL: deep3dface reads local files only; download the photo first")
        if not path.exists():
            raise ImageReadError(name, "no such file")
        if path.is_dir():
            raise ImageReadError(name, "is a directory")
        if path.stat().st_size == 0:
            raise ImageReadError(name, "empty file (0 bytes)")
        try:
            return path.open("rb")
        except OSError as err:
            raise ImageReadError(name, f"cannot open ({err.strerror or err})") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageReadError(name, "empty data (0 bytes)")
        return io.BytesIO(bytes(source))
    if not hasattr(source, "read"):
        raise TypeError(f"cannot read an image from {type(source).__name__}")
    return contextlib.nullcontext(source)


_HEIF_READY: bool | None = None   # pillow-heif's opener: None until a HEIC/HEIF file asks


def _heif_opener() -> bool:
    """Register the pillow-heif plugin's HEIC/HEIF opener with Pillow, once; False without it."""
    global _HEIF_READY
    if _HEIF_READY is None:
        try:
            import pillow_heif
        except ImportError:
            _HEIF_READY = False
        else:
            pillow_heif.register_heif_opener()
            _HEIF_READY = True
    return _HEIF_READY


#: ISO-BMFF brands of HEIF still images: a phone's HEIC photo is often renamed .jpg on its way out
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})


def _heif_header(source: ImageSource) -> bool:
    """Whether a path's or bytes' header is a HEIF 'ftyp' box (a caller's stream is not re-read)."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                head = f.read(12)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            head = bytes(source[:12])
        else:
            return False
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _unidentified(name: str, source: ImageSource) -> str:
    """Why Pillow could not identify a file, with what it needs where the suffix or header says."""
    suffix = Path(name).suffix.lower()
    if (suffix in _HEIF_SUFFIXES or _heif_header(source)) and not _heif_opener():
        return "a HEIC/HEIF photo: Pillow reads these with the pillow-heif plugin (pip install pillow-heif)"
    if suffix == ".avif":
        return "an AVIF photo this Pillow build cannot read (PIL.features.check('avif') is False)"
    return "not an image Pillow can identify"


def _array_image(array: np.ndarray) -> Image.Image:
    """A uint8 (H, W), (H, W, 3) or (H, W, 4) array (what OpenCV, imageio and np.asarray(PIL)
    give; OpenCV's is BGR: flip it with array[..., ::-1]) as a Pillow image; a TypeError with the
    recipe for anything else."""
    if array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        return Image.fromarray(np.ascontiguousarray(array))
    raise TypeError(f"cannot read an image from a {array.dtype} array of shape {array.shape}: pass a uint8 "
                    "(H, W), (H, W, 3) or (H, W, 4) array, or a (3, H, W) float tensor in [0, 1] "
                    "(e.g. torch.from_numpy(array).permute(2, 0, 1).float() / 255)")


def _open(source: ImageSource) -> Image.Image:
    """A fully decoded, upright Pillow image."""
    name = _name(source)
    if isinstance(source, np.ndarray):
        source = _array_image(source)
    if isinstance(source, Image.Image):
        image = source
    else:
        if Path(name).suffix.lower() in _HEIF_SUFFIXES:
            _heif_opener()
        try:
            with _stream(source, name) as stream:
                image = Image.open(stream)
                image.load()  # decode now, while the file is open, so truncation shows here
        except ImageReadError:
            raise
        except UnidentifiedImageError:
            if _HEIF_READY is None and _heif_header(source) and _heif_opener():
                return _open(source)  # a HEIC photo under another suffix: read now that the plugin is in
            raise ImageReadError(name, _unidentified(name, source)) from None
        except Image.DecompressionBombError as err:
            raise ImageReadError(name, f"too large ({err})") from None
        except (OSError, SyntaxError, ValueError) as err:  # Pillow reports truncation and corruption as these
            raise ImageReadError(name, f"corrupt or truncated image data ({err})") from None
    if image.width == 0 or image.height == 0:
        raise ImageReadError(name, f"zero size ({image.width}x{image.height})")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not make a readable photo unreadable
        pass
    return image


def _float_rgb(image: Image.Image, name: str) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] from any mode, alpha composited on black."""
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode == "F":
        values = np.asarray(image, dtype=np.float32)
        scale = 65535.0
        if mode == "F":  # a float image's NaN/inf pixels have no colour, and would pick its 0-1 or 0-255 scale
            bad = int(np.count_nonzero(~np.isfinite(values)))
            if bad:
                raise ImageReadError(name, f"float image with {bad} NaN or infinite pixel value(s)")
            scale = 1.0 if values.size and float(values.max()) <= 1.0 else 255.0
        grey = np.clip(values / scale, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=-1)
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        return rgba[..., :3] * rgba[..., 3:]
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _is_plain_8bit(image: Image.Image) -> bool:
    return image.mode in {"RGB", "L", "1", "CMYK", "YCbCr", "LAB", "HSV", "P"} and "transparency" not in image.info


def read_image_uint8(source: ImageSource) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the I/O-edge form (16-bit data and alpha are rounded after conversion)."""
    image = _open(source)
    if _is_plain_8bit(image):
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return np.round(_float_rgb(image, _name(source)) * 255.0).astype(np.uint8)


def read_image(source: ImageSource) -> torch.Tensor:
    """(3, H, W) float32 RGB in [0, 1], upright; see the module notes for modes and alpha."""
    image = _open(source)
    if _is_plain_8bit(image):
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)  # read-only: Pillow's buffer
        # a copy, always: for a 1 x 1 photo the transpose is already contiguous, ascontiguousarray
        # returned the read-only array itself and torch warned that it is not writable
        return torch.from_numpy(np.array(array.transpose(2, 0, 1), order="C")).to(torch.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(_float_rgb(image, _name(source)).transpose(2, 0, 1)))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8 (rounded, clipped): the way back to the I/O edge."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got {tuple(image.shape)}")
    array = (image.detach().to("cpu", torch.float32).clamp(0, 1) * 255.0).round().to(torch.uint8)
    return np.ascontiguousarray(array.permute(1, 2, 0).numpy())
