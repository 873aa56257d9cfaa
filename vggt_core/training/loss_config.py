"""Every weight and constant of the training objective, with the reference's defaults.

``LossConfig()`` reproduces the authors' released fine-tuning objective exactly (see
docs/training.md, "Losses"). ``LossConfig.paper()`` switches the three places where that code
departs from the paper's formulas to the paper's form.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

CAMERA_LOSS_TYPES = ("l1", "l2", "huber")
# Gradient-term names follow the reference: "grad" (depth gradients), "normal" (surface normals);
# a name containing "conf" weights the term by the confidence, anything else disables it.
GRADIENT_LOSS_TYPES = ("grad", "grad_conf", "normal", "normal_conf", "none")
PAPER_TRACK_WEIGHT = 0.05  # the paper's λ for the tracking term


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and constants.

    Camera: ``camera_weight · (weight_trans·L_T + weight_rot·L_R + weight_focal·L_FL)`` where each
    ``L_X`` sums the refinement stages with weights ``camera_gamma^(K-1-k)`` and divides by ``K``.
    Depth / point: ``weight · (conf + reg + grad)`` with ``conf = gamma·r·C − alpha·ln C``.
    """

    # Camera.
    camera_weight: float = 5.0
    camera_loss_type: str = "l1"          # the paper says Huber; the reference trains with L1
    camera_gamma: float = 0.6
    weight_trans: float = 1.0
    weight_rot: float = 1.0
    weight_focal: float = 0.5
    huber_delta: float = 1.0              # only for camera_loss_type="huber"
    camera_min_frame0_pixels: int = 100   # a sequence needs more valid frame-0 pixels than this

    # Depth.
    depth_weight: float = 1.0
    depth_gradient_loss: str = "grad"     # the paper weights it by confidence ("grad_conf")
    depth_valid_range: float = 0.98
    depth_gamma: float = 1.0
    depth_alpha: float = 0.2

    # Point map (only with point=True).
    point_weight: float = 1.0
    point_gradient_loss: str = "normal"
    point_valid_range: float = 0.98
    point_gamma: float = 1.0
    point_alpha: float = 0.2

    # The reference adds the unweighted regression term "reg" to the objective; the paper does not.
    include_regression_term: bool = True

    # Shared constants.
    hard_max: float = 100.0               # every clamp of an error, GT value or term
    dense_min_valid_pixels: int = 100     # fewer valid pixels in the batch: dense losses are zero
    quantile_min_elements: int = 1000
    gradient_loss_scales: int = 4         # steps 1, 2, 4, 8
    normal_loss_scales: int = 3           # steps 1, 2, 4
    normal_min_valid: int = 10

    # Track loss (the paper's form; off by default as in the reference). When it is switched on
    # (compute_losses(track=True) or --track-loss) the trainer uses the paper's weight.
    track_weight: float = 0.0
    track_gamma: float = 0.8
    track_vis_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.camera_loss_type not in CAMERA_LOSS_TYPES:
            raise ValueError(f"camera_loss_type must be one of {CAMERA_LOSS_TYPES}, got {self.camera_loss_type!r}")
        for name in ("depth_gradient_loss", "point_gradient_loss"):
            if getattr(self, name) not in GRADIENT_LOSS_TYPES:
                raise ValueError(f"{name} must be one of {GRADIENT_LOSS_TYPES}, got {getattr(self, name)!r}")
        for name in ("depth_valid_range", "point_valid_range"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @classmethod
    def paper(cls, **overrides) -> "LossConfig":
        """The paper's formulas: Huber pose loss, confidence-weighted gradient terms, no extra
        unweighted regression term. Everything else as the reference."""
        values = dict(camera_loss_type="huber", depth_gradient_loss="grad_conf",
                      point_gradient_loss="grad_conf", include_regression_term=False)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes) -> "LossConfig":
        return dataclasses.replace(self, **changes)
