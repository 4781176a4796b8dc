"""Models: classifiers (`classifiers`, the CIFAR networks of 003 in `cifar_classifiers`),
normalizing flows (`flows`), the DIGLM (`diglm`), document 002's VAE (`vae`), models by
config (`factory`), and one forward pass shared by an evaluation's scores (`feature_cache`)."""

from workloads.models.cifar_classifiers import DenseNetBC100, WideResNet28
from workloads.models.classifiers import CLASSIFIERS, MLPClassifier, SmallCNN, build_classifier
from workloads.models.diglm import DIGLM, diglm_objective
from workloads.models.factory import (
    GENERATIVE_MODELS,
    build_generative_model,
    build_model,
    build_vae,
    model_provides,
)
from workloads.models.feature_cache import FeatureCache, feature_cached
from workloads.models.flows import Flow, build_flow
from workloads.models.vae import ConvVAE

__all__ = [
    "CLASSIFIERS", "ConvVAE", "DIGLM", "DenseNetBC100", "FeatureCache", "GENERATIVE_MODELS",
    "Flow", "MLPClassifier", "SmallCNN", "WideResNet28",
    "build_classifier", "build_flow", "build_generative_model", "build_model", "build_vae",
    "diglm_objective", "feature_cached", "model_provides",
]
