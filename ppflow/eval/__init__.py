"""Evaluation: FID / sFID / precision / recall with the TF Inception-v3 (ADM-compatible), in-domain Fashion-MNIST
classifier metrics, and the `ppflow eval` suite."""

from .classifier import (
    ClassifierTrainConfig,
    FashionCNN,
    classifier_metrics,
    classifier_outputs,
    load_classifier,
    train_classifier,
)
from .evaluator import EvalOptions, evaluate
from .features import InceptionFeatures, inception_features
from .inception import InceptionV3, InceptionWeightsError, load_inception
from .metrics import inception_score, precision_recall
from .sources import ImageSet, default_cache_dir, load_images
from .stats import FeatureStats, feature_stats, fid_from_features, frechet_distance

__all__ = [
    "ClassifierTrainConfig", "EvalOptions", "FashionCNN", "FeatureStats", "ImageSet", "InceptionFeatures",
    "InceptionV3", "InceptionWeightsError", "classifier_metrics", "classifier_outputs", "default_cache_dir",
    "evaluate", "feature_stats", "fid_from_features", "frechet_distance", "inception_features", "inception_score",
    "load_classifier", "load_images", "load_inception", "precision_recall", "train_classifier",
]
