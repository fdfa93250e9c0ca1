"""``deep3dface render --size``'s limits, apart from edit.py (which imports torch) so the CLI's
help states them without slowing every command's start-up."""

#: smallest --size: below it the face is a few pixels wide
MIN_SIZE = 16
#: largest --size: the rasteriser holds ~120 bytes a pixel (8192² ≈ 8 GB); beyond it torch fails mid-render
MAX_SIZE = 8192
