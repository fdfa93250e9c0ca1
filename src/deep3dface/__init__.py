"""deep3dface: accurate 3D face reconstruction from photos and image sets (Deng et al., 2019)."""
__version__ = "0.1.0"


def __getattr__(name):  # lazy: importing the package must not load torch models
    if name in ("Reconstructor", "FaceReconstruction"):
        from . import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module 'deep3dface' has no attribute {name!r}")
