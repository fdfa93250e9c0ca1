"""Face detection: MTCNN (boxes, scores, 5 landmarks) and its building blocks.

NMS lives in ``deep3dface.detect.nms`` (not re-exported here, so that the name ``nms`` stays the
module).
"""
from deep3dface.detect.mtcnn import MTCNN, MTCNNConfig
from deep3dface.detect.types import LANDMARKS5, Detection

__all__ = ["MTCNN", "MTCNNConfig", "Detection", "LANDMARKS5"]
