"""Feature extractors (pixels, random-init CNN, torchvision, timm, inception-fid, DINOv2, CLIP), local weights, and the
training-feature cache."""

from diffaudit.features.cache import extract_features, training_features, training_features_key
from diffaudit.features.extractors import Extractor, NetworkExtractor, PixelExtractor
from diffaudit.features.registry import UnknownExtractor, available_extractors, create_extractor
from diffaudit.features.weights import InvalidWeights

__all__ = [
    "Extractor",
    "InvalidWeights",
    "NetworkExtractor",
    "PixelExtractor",
    "UnknownExtractor",
    "available_extractors",
    "create_extractor",
    "extract_features",
    "training_features",
    "training_features_key",
]
