"""Image reading: EXIF orientation, every Pillow mode we meet, alpha on black, and clear errors."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from deep3dface.io import ImageReadError, read_image, read_image_uint8, to_uint8


def upright_pattern(h=40, w=24) -> np.ndarray:
    """An asymmetric RGB pattern in flat 8x8 blocks (JPEG keeps flat blocks nearly exact)."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:16, :8] = (250, 20, 20)     # red top-left
    img[-8:, -16:] = (20, 20, 250)   # blue bottom-right
    img[16:24] = (20, 230, 20)       # green band
    return img


def test_plain_rgb_png(tmp_path):
    img = upright_pattern()
    Image.fromarray(img).save(tmp_path / "a.png")
    t = read_image(tmp_path / "a.png")
    assert t.dtype == torch.float32 and t.shape == (3, 40, 24) and t.is_contiguous()
    assert torch.equal(t, torch.from_numpy(img).permute(2, 0, 1).float() / 255)
    assert np.array_equal(read_image_uint8(str(tmp_path / "a.png")), img)


@pytest.mark.parametrize("orientation, undo", [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90),
                                               (8, Image.Transpose.ROTATE_270), (2, Image.Transpose.FLIP_LEFT_RIGHT)])
def test_exif_orientation_is_applied(tmp_path, orientation, undo):
    upright = upright_pattern()
    # store the pixels as a camera would (sideways), with the tag that tells viewers how to turn them
    stored = Image.fromarray(upright).transpose(undo)
    exif = Image.Exif()
    exif[274] = orientation
    stored.save(tmp_path / "rotated.jpg", quality=98, exif=exif)
    got = read_image_uint8(tmp_path / "rotated.jpg")
    assert got.shape == upright.shape
    assert np.abs(got.astype(int) - upright).mean() < 4


def test_grey_palette_and_cmyk(tmp_path):
    grey = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    t = read_image(tmp_path / "g.png")
    assert t.shape == (3, 4, 6) and torch.equal(t[0], t[2]) and torch.equal(t[1], torch.from_numpy(grey) / 255.0)

    palette = Image.fromarray(upright_pattern()).quantize(8)
    assert palette.mode == "P"
    palette.save(tmp_path / "p.png")
    assert np.abs(read_image_uint8(tmp_path / "p.png").astype(int) - upright_pattern()).max() <= 8

    Image.new("CMYK", (5, 4), (255, 0, 0, 0)).save(tmp_path / "c.jpg", quality=100)  # pure cyan ink
    rgb = read_image(tmp_path / "c.jpg")
    assert rgb[0].max() < 0.05 and rgb[1].min() > 0.95 and rgb[2].min() > 0.95


def test_sixteen_bit_grey_scales_65535_to_one(tmp_path):
    values = np.array([[0, 257, 32768], [65535, 1000, 50000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode.startswith("I")
    t = read_image(tmp_path / "16.png")
    assert torch.allclose(t[1].double(), torch.from_numpy(values / 65535.0), atol=1e-7)
    assert read_image_uint8(tmp_path / "16.png")[0, 1, 0] == 1  # 257 / 65535 * 255 = 1


def test_float_grey_tiff_in_0_1_or_0_255_reads_as_the_same_photo(tmp_path):
    """A 32-bit float TIFF holds 0-255 values or 0-1 ones; the 0-1 kind used to come out black
    (no face found, no error). Both read as the 8-bit grey photo they were made from."""
    grey = np.asarray(Image.fromarray(upright_pattern()).convert("L"), dtype=np.float32)
    for name, values in (("255.tif", grey), ("unit.tif", grey / 255.0)):
        Image.fromarray(values, mode="F").save(tmp_path / name)
        assert Image.open(tmp_path / name).mode == "F"
        t = read_image(tmp_path / name)
        assert t.shape == (3, *grey.shape)
        assert torch.allclose(t, torch.from_numpy(grey / 255.0).float().expand(3, -1, -1), atol=1e-6), name
    Image.fromarray(np.full((4, 4), 1.0, np.float32), mode="F").save(tmp_path / "white.tif")
    assert torch.equal(read_image(tmp_path / "white.tif"), torch.ones(3, 4, 4))  # at most 1: the 0-1 kind
    # NaN or inf pixels: refused by name (inf made a 0-1 photo read on the 0-255 scale, NaN passed through)
    for bad in (np.nan, np.inf):
        values = grey / 255.0
        values[0, 0] = bad
        Image.fromarray(values, mode="F").save(tmp_path / "bad.tif")
        with pytest.raises(ImageReadError, match=r"bad\.tif.*1 NaN or infinite pixel value"):
            read_image(tmp_path / "bad.tif")


def test_alpha_is_composited_on_black(tmp_path):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = [[255, 128, 0], [0, 64, 255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    t = read_image(tmp_path / "a.png")
    alpha = torch.from_numpy(rgba[..., 3] / 255.0).float()
    assert torch.allclose(t[0], 200 / 255 * alpha) and torch.allclose(t[2], 50 / 255 * alpha)
    assert read_image_uint8(tmp_path / "a.png")[0, 2].tolist() == [0, 0, 0]

    la = Image.fromarray(np.stack([np.full((2, 2), 200, np.uint8), np.full((2, 2), 51, np.uint8)], -1), "LA")
    la.save(tmp_path / "la.png")
    assert torch.allclose(read_image(tmp_path / "la.png"), torch.full((3, 2, 2), 200 / 255 * 0.2))

    p = Image.new("P", (2, 1))
    p.putpalette([255, 255, 255, 10, 20, 30] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0  # palette entry 0 (white) is transparent
    p.save(tmp_path / "pt.png")
    assert read_image_uint8(tmp_path / "pt.png")[0].tolist() == [[0, 0, 0], [10, 20, 30]]


def test_sources_bytes_stream_and_pil(tmp_path):
    img = upright_pattern()
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert np.array_equal(read_image_uint8(data), img)
    stream = io.BytesIO(data)
    assert np.array_equal(read_image_uint8(stream), img) and not stream.closed  # the caller's stream stays open
    assert np.array_equal(read_image_uint8(Image.fromarray(img)), img)
    assert np.array_equal(to_uint8(read_image(data)), img)


@pytest.mark.parametrize("make, reason", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("this is not an image\n"), "not an image"),
    (lambda p: p.mkdir(), "directory"),
])
def test_bad_files_raise_image_read_error(tmp_path, make, reason):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert isinstance(err.value, ValueError)
    assert str(path) in str(err.value) and reason in err.value.reason and err.value.path == str(path)


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (4, 1)])
def test_tiny_photos_read_without_a_warning(tmp_path, size):
    """A 1 x 1 PNG printed PyTorch's 'The given NumPy array is not writable' UserWarning to the
    user (its transpose was already contiguous, so no copy of Pillow's read-only buffer was made)."""
    import warnings

    Image.new("RGB", size, (10, 200, 30)).save(tmp_path / "tiny.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_image(tmp_path / "tiny.png")
    assert image.shape == (3, size[1], size[0])
    assert torch.allclose(image[:, 0, 0], torch.tensor([10, 200, 30]) / 255.0)


def test_a_heic_photo_without_its_plugin_fails_with_what_it_needs(tmp_path):
    """An iPhone's .heic was skipped by folder scans; read, it said only 'not an image Pillow can
    identify'.  Without pillow-heif the reason now says what to install."""
    import importlib.util

    if importlib.util.find_spec("pillow_heif") is not None:
        pytest.skip("pillow-heif is installed: HEIC photos are read")
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert err.value.reason == "a HEIC/HEIF photo: Pillow reads these with the pillow-heif plugin (pip install pillow-heif)"
    # a HEIC photo renamed .jpg (as phones export them) is known by its header, as file or bytes
    renamed = tmp_path / "IMG_0001.jpg"
    renamed.write_bytes(path.read_bytes())
    for source in (renamed, renamed.read_bytes()):
        with pytest.raises(ImageReadError, match="a HEIC/HEIF photo: .*pip install pillow-heif"):
            read_image(source)
    (tmp_path / "notes.jpg").write_text("not an image")            # other suffixes keep the plain reason
    with pytest.raises(ImageReadError, match="not an image Pillow can identify"):
        read_image(tmp_path / "notes.jpg")


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="truncated") as err:
        read_image(path)
    assert "cut.jpg" in str(err.value)


def test_to_uint8_validates_shape():
    with pytest.raises(ValueError):
        to_uint8(torch.zeros(4, 4))


def test_a_heic_photo_under_another_suffix_is_read_once_the_plugin_is_there(tmp_path, monkeypatch):
    """The HEIF opener was registered only for .heic/.heif names; a HEIC renamed .jpg is now known by
    its header and read through the plugin (a stand-in for pillow-heif that decodes raw RGB)."""
    import sys
    import types

    from PIL import ImageFile

    import deep3dface.io.images as images

    header = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    pixels = bytes(range(12))

    class StandIn(ImageFile.ImageFile):
        format = "STANDIN_HEIF"

        def _open(self):
            self._size = (2, 2)
            self._mode = "RGB"
            tile = getattr(ImageFile, "_Tile", lambda *fields: fields)  # Pillow < 11 takes plain tuples
            self.tile = [tile("raw", (0, 0, 2, 2), len(header), ("RGB", 0, 1))]

    def register_heif_opener():
        Image.register_open(StandIn.format, StandIn, lambda prefix: prefix[4:12] == b"ftypheic")

    monkeypatch.setitem(sys.modules, "pillow_heif", types.SimpleNamespace(register_heif_opener=register_heif_opener))
    monkeypatch.setattr(images, "_HEIF_READY", None)
    try:
        (tmp_path / "IMG_0001.jpg").write_bytes(header + pixels)
        photo = read_image(tmp_path / "IMG_0001.jpg")
        assert torch.equal(photo, torch.tensor(list(pixels), dtype=torch.float32).reshape(2, 2, 3).permute(2, 0, 1) / 255)
    finally:
        Image.OPEN.pop(StandIn.format, None)
        if StandIn.format in Image.ID:
            Image.ID.remove(StandIn.format)
