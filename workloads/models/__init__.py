"""Models: classifiers (`classifiers`), normalizing flows (`flows`), the DIGLM (`diglm`), and
models by config (`factory`)."""

from workloads.models.classifiers import CLASSIFIERS, MLPClassifier, SmallCNN, build_classifier
from workloads.models.diglm import DIGLM, diglm_objective
from workloads.models.factory import (
    GENERATIVE_MODELS,
    build_generative_model,
    build_model,
    model_provides,
)
from workloads.models.flows import Flow, build_flow

__all__ = [
    "CLASSIFIERS", "DIGLM", "GENERATIVE_MODELS", "Flow", "MLPClassifier", "SmallCNN",
    "build_classifier", "build_flow", "build_generative_model", "build_model",
    "diglm_objective", "model_provides",
]
