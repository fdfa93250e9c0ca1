"""Networks: the R-Net coefficient regressor (ResNet-50 + linear head) and its checkpoint loaders."""
from .resnet import ResNet50, ResNetVariant, fold_batchnorm
from .rnet import CheckpointError, RNet, load_rnet, merge_heads, prepare_for_inference

__all__ = ["CheckpointError", "RNet", "ResNet50", "ResNetVariant", "fold_batchnorm", "load_rnet", "merge_heads",
           "prepare_for_inference"]
