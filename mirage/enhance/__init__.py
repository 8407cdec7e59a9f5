"""Face enhancement after the swap: GFPGAN 1.4, CodeFormer, GPEN-BFR 256/512 as ONNX (issue 11)."""

from mirage.enhance.bank import (
    ENHANCE_FAILED,
    ENHANCER_UNAVAILABLE,
    EnhancerBank,
    EnhancerConfig,
    EnhanceRequest,
    EnhanceResult,
)
from mirage.enhance.base import (
    DEFAULT_FIDELITY,
    ENHANCER_NONE,
    EnhanceItem,
    FaceEnhancer,
    blend_enhanced,
    five_points_in_crop,
)
from mirage.enhance.models import ENHANCER_NAMES, available_enhancers, load_enhancer, offline_store
from mirage.enhance.onnx_enhancer import EnhancerInfo, OnnxFaceEnhancer

__all__ = [
    "DEFAULT_FIDELITY",
    "ENHANCER_NAMES",
    "ENHANCER_NONE",
    "ENHANCER_UNAVAILABLE",
    "ENHANCE_FAILED",
    "EnhanceItem",
    "EnhanceRequest",
    "EnhanceResult",
    "EnhancerBank",
    "EnhancerConfig",
    "EnhancerInfo",
    "FaceEnhancer",
    "OnnxFaceEnhancer",
    "available_enhancers",
    "blend_enhanced",
    "five_points_in_crop",
    "load_enhancer",
    "offline_store",
]
