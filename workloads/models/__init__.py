"""Models: classifiers (`classifiers`, the CIFAR networks of 003 in `cifar_classifiers`),
normalizing flows (`flows`), the DIGLM (`diglm`), models by config (`factory`), and one
forward pass shared by an evaluation's scores (`feature_cache`)."""

from workloads.models.cifar_classifiers import DenseNetBC100, WideResNet28
from workloads.models.classifiers import CLASSIFIERS, MLPClassifier, SmallCNN, build_classifier
from workloads.models.diglm import DIGLM, diglm_objective
from workloads.models.factory import (
    GENERATIVE_MODELS,
    build_generative_model,
    build_model,
    model_provides,
)
from workloads.models.feature_cache import FeatureCache
from workloads.models.flows import Flow, build_flow

__all__ = [
    "CLASSIFIERS", "DIGLM", "DenseNetBC100", "FeatureCache", "GENERATIVE_MODELS", "Flow",
    "MLPClassifier", "SmallCNN", "WideResNet28",
    "build_classifier", "build_flow", "build_generative_model", "build_model",
    "diglm_objective", "model_provides",
]
