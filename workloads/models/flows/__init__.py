"""Normalizing flows (NOTES.md B): transforms in the style of nflows, RealNVP for vectors and
images (`transforms`), pixel preprocessing (`preprocessing`), the density (`density`), flows
by name (`presets`), and the approximate-mass regularizer (`regularizer`)."""

from workloads.models.flows.density import Flow, bits_per_dim
from workloads.models.flows.preprocessing import (
    DEQUANTIZATIONS,
    LogitTransform,
    PixelEmbedding,
    dequantize,
)
from workloads.models.flows.presets import IMAGE_FLOW_PRESETS, build_flow
from workloads.models.flows.regularizer import (
    am_regularized_nll,
    approximate_mass,
    flow_objective,
    penalized_nll,
)
from workloads.models.flows.transforms import (
    AffineCoupling,
    CompositeTransform,
    FlowInputError,
    ImageCoupling,
    ImageRealNVP,
    ResidualNet,
    Squeeze,
    Transform,
    VectorRealNVP,
    checkerboard,
)

__all__ = [
    "DEQUANTIZATIONS", "IMAGE_FLOW_PRESETS", "AffineCoupling", "CompositeTransform", "Flow",
    "FlowInputError", "ImageCoupling", "ImageRealNVP", "LogitTransform", "PixelEmbedding",
    "ResidualNet", "Squeeze", "Transform", "VectorRealNVP", "am_regularized_nll",
    "approximate_mass", "bits_per_dim", "build_flow", "checkerboard", "dequantize",
    "flow_objective", "penalized_nll",
]
