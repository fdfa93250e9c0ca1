"""Networks: the R-Net coefficient regressor (ResNet-50 + linear head) and its checkpoint loaders."""
from .resnet import ResNet50, ResNetVariant
from .rnet import CheckpointError, RNet, load_rnet, merge_heads

__all__ = ["CheckpointError", "RNet", "ResNet50", "ResNetVariant", "load_rnet", "merge_heads"]
