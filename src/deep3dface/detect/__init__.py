"""Face detection and facial landmarks.

* MTCNN (boxes, scores, 5 landmarks) and its building blocks;
* landmarkers (``create_landmarker``: MediaPipe's 468-point mesh with iBUG-68 points, or dlib's 68),
  ``landmarks_of`` a detected face;
* ``dense_correspondence``: MediaPipe's 468 points -> vertices of a morphable model.

NMS lives in ``deep3dface.detect.nms`` (not re-exported here, so that the name ``nms`` stays the
module).  Landmarker backends import their heavy dependencies only when created.
"""
from deep3dface.detect.correspondence import DenseCorrespondence, dense_correspondence, point_weights
from deep3dface.detect.landmarks import Landmarker, LandmarkResult, create_landmarker, landmarks_of
from deep3dface.detect.mtcnn import MTCNN, FallbackConfig, MTCNNConfig
from deep3dface.detect.types import LANDMARKS5, Detection

__all__ = ["MTCNN", "MTCNNConfig", "FallbackConfig", "Detection", "LANDMARKS5",
           "Landmarker", "LandmarkResult", "create_landmarker", "landmarks_of",
           "DenseCorrespondence", "dense_correspondence", "point_weights"]
