"""Fine-tuning VGGT: ground-truth normalisation, the reference's losses, scene data, a trainer.

See docs/training.md. The public entry points:

- :func:`normalize_ground_truth`: batch → batch in the frame-0 camera frame, mean distance 1.
- :func:`compute_losses`: predictions + normalised batch → every loss term and ``objective``.
- :class:`LossConfig`: every weight and constant (reference defaults; ``LossConfig.paper()``).
- :class:`SceneDataset`: scene folders (ours, COLMAP, synthetic) → batches.
- :class:`Trainer` / :class:`TrainingSettings`: the fine-tuning loop (``python -m vggt_core finetune``).
"""

from .camera_loss import ground_truth_pose_encoding
from .dataset import SceneDataset
from .loss_config import LossConfig
from .losses import compute_losses
from .normalization import normalize_ground_truth
from .trainer import Trainer, TrainingSettings

__all__ = ["LossConfig", "SceneDataset", "Trainer", "TrainingSettings", "compute_losses",
           "ground_truth_pose_encoding", "normalize_ground_truth"]
