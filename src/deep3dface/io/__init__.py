"""Input and output at the library's edge: reading photos (and, later, landmark files)."""
from deep3dface.io.images import ImageReadError, read_image, read_image_uint8, to_uint8

__all__ = ["ImageReadError", "read_image", "read_image_uint8", "to_uint8"]
