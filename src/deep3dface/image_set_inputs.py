"""The photos a caller gives ``reconstruct_set``: checked and named before any work, then read
one at a time, each counted once.

The same photo twice would weigh twice in the person's identity: a file given again (by any path
to it) is not read again, and a photo whose pixels equal an earlier one's (a copy of a file under
another name, the same tensor twice) is left out too, each with the reason.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image

from .io.images import ImageReadError, read_image


def read_photos(photos: list, names: list[str],
                leave_out: Callable[[str, str], None]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, (3, H, W) photo) for each photo to use, read in turn (one photo in memory at a time);
    ``leave_out(name, reason)`` for each photo that cannot be read or repeats an earlier one.
    ``photos`` as ``photo_list`` returns them (tensors checked already)."""
    files, pixels = {}, {}
    for name, source in zip(names, photos, strict=True):
        if not isinstance(source, torch.Tensor):
            file = Path(source).resolve()
            if file in files:
                leave_out(name, f"the same file as {files[file]}")
                continue
            files[file] = name
        try:
            image = source if isinstance(source, torch.Tensor) else read_image(source)
        except ImageReadError as exc:  # left out with its reason: the person's other photos still count
            leave_out(name, f"cannot read the photo ({exc.reason})")
            continue
        digest = _pixel_digest(image)
        if digest in pixels:
            leave_out(name, f"the same pixels as {pixels[digest]}")
            continue
        pixels[digest] = name
        yield name, image


def photo_list(photos) -> list:
    """``photos`` as a list, or a TypeError/ValueError before any work: a str was taken one
    character a photo (each "dropped", no error), a Path failed as "not iterable", a generator was
    used up by the names, and an empty list gave an empty result without a word."""
    if isinstance(photos, (str, bytes, os.PathLike, Image.Image)) or (isinstance(photos, torch.Tensor) and photos.ndim < 4):
        raise TypeError(f"photos must be a list of photos (paths or (3, H, W) tensors), got one "
                        f"{type(photos).__name__}; pass [photo]")
    from .io.photos import photo_tensor

    photos = list(photos)
    if not photos:
        raise ValueError("photos is empty: a set needs at least one photo")
    for index, photo in enumerate(photos):  # named by position, before the first photo is read
        if isinstance(photo, (str, os.PathLike)):
            continue  # read in turn by read_photos: one photo in memory at a time
        try:  # a tensor checked, a PIL image, array or bytes read: here once, as reconstruct would
            photos[index] = photo_tensor(photo)
        except TypeError as exc:
            raise TypeError(f"photos[{index}]: {exc}") from None
        except ValueError as exc:  # ImageReadError too
            raise ValueError(f"photos[{index}]: {exc}") from None
    return photos


def photo_names(photos: list, names: list[str] | None) -> list[str]:
    """The caller's names (which must be unique: results are matched to photos by name), else each
    file's stem (``photo<i>`` for a tensor), made unique as ``reconstruct``'s output stems are."""
    from .outputs import output_stems

    if names is not None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"names must be a list of str, one a photo, got {names!r}")
        names = list(names)
        if len(set(names)) != len(names):
            raise ValueError(f"photo names must be unique, got {sorted(n for n in set(names) if names.count(n) > 1)} more than once")
        if len(names) != len(photos):
            raise ValueError(f"{len(names)} names for {len(photos)} photos")
        return list(names)
    return output_stems([Path(f"photo{i}") if isinstance(p, torch.Tensor) else Path(p) for i, p in enumerate(photos)])


def _pixel_digest(image: torch.Tensor) -> tuple:
    """A photo's shape and a hash of all its pixels (~0.1 s for 12 megapixels; a set's fit takes seconds)."""
    data = image.detach().cpu().contiguous()
    raw = data.view(torch.uint8).numpy()  # numpy has no bfloat16: hash the bytes
    return data.dtype, tuple(data.shape), hashlib.blake2b(raw.tobytes(), digest_size=16).digest()
