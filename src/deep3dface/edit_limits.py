"""``deep3dface render``'s limits (``--size``, ``--light``), apart from edit.py (which imports torch) so the CLI's
help states them without slowing every command's start-up."""

#: smallest --size: below it the face is a few pixels wide
MIN_SIZE = 16
#: largest --size: the rasteriser holds ~120 bytes a pixel (8192² ≈ 8 GB); beyond it torch fails mid-render
MAX_SIZE = 8192
#: largest |SH coefficient| of a --light (all 27, ambient offset not included): lights fitted to real
#: photos stay within 0.4 (14 AFLW2000-3D dev photos: 0.15-0.40) and so do the presets; at 2 in band 0
#: the irradiance is 2.5 and the face is white wherever the albedo passes 0.4: a larger value is a
#: file of something else (0-255 values, another layout), not a light
MAX_LIGHT = 2.0
