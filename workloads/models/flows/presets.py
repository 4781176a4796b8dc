"""Flows by name: `build_flow(kind, ...)` with a vector or image body, and the image presets of
NOTES.md B (after Kirichenko et al. 2020)."""

from __future__ import annotations

import math

from workloads.models.flows.density import Flow
from workloads.models.flows.transforms import (
    FlowInputError,
    ImageRealNVP,
    Transform,
    VectorRealNVP,
)

IMAGE_FLOW_PRESETS: dict[str, dict[str, int]] = {
    "fashionmnist": {"num_scales": 2, "num_blocks": 6, "hidden": 64},
    "cifar10": {"num_scales": 3, "num_blocks": 8, "hidden": 64},
}



def build_flow(kind: str, input_shape: tuple[int, ...], levels: int | None,
               convention: str = "centred", logit_lambda: float = 0.05,
               **body_kwargs) -> Flow:
    """A `Flow` with a `vector` body (num_couplings, hidden, depth) or an `image` body
    (num_scales, num_blocks, hidden; or `preset` = a key of IMAGE_FLOW_PRESETS)."""
    if kind == "vector":
        body: Transform = VectorRealNVP(math.prod(input_shape), **body_kwargs)
    elif kind == "image":
        preset = body_kwargs.pop("preset", None)
        if preset:
            if preset not in IMAGE_FLOW_PRESETS:
                raise ValueError(f"unknown flow preset '{preset}'; known: "
                                 f"{', '.join(IMAGE_FLOW_PRESETS)}")
            body_kwargs = {**IMAGE_FLOW_PRESETS[preset]}
        if len(input_shape) != 3:
            raise FlowInputError(f"the image flow needs (C, H, W) inputs, got {input_shape}")
        body = ImageRealNVP(input_shape, **body_kwargs)
    else:
        raise ValueError(f"unknown flow '{kind}'; known: vector, image")
    return Flow(body, input_shape, levels, convention, logit_lambda)
