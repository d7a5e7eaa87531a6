"""rtpanoptic: real-time panoptic segmentation from dense detections (Hou et al., CVPR 2020)."""
__version__ = "0.1.0"

from . import ops  # noqa: F401
