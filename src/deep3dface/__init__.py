"""deep3dface: accurate 3D face reconstruction from photos and image sets (Deng et al., 2019)."""
__version__ = "0.1.0"
