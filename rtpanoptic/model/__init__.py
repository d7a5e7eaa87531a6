"""The network: ResNet-FPN backbone, unified panoptic head, presets."""
from .config import BackboneConfig, FPNConfig, HeadConfig, InferenceConfig, ModelConfig
from .network import PanopticNet
from .outputs import HeadOutputs
from .presets import PRESETS, build_model, preset_config

__all__ = [
    "PRESETS",
    "BackboneConfig",
    "FPNConfig",
    "HeadConfig",
    "HeadOutputs",
    "InferenceConfig",
    "ModelConfig",
    "PanopticNet",
    "build_model",
    "preset_config",
]
