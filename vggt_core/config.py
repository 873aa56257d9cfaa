"""VGGT hyper-parameters: one source of truth for every size the model is built with.

The schema is the implementers' JSON schema: top-level aggregator keys plus one nested section per
sub-module. ``VGGTConfig()`` is VGGT-1B. Unknown keys and impossible values raise ``ValueError``
naming the offending key, because a silently ignored typo would otherwise surface later as a
strict-loading failure with thousands of mismatched keys.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The released model's input geometry: images are resized to this width (or longer side) and
# cut into patches of this size. The config defaults below and the image loader share them.
DEFAULT_IMAGE_SIZE = 518
PATCH_SIZE = 14

# Fixed by the architecture (not part of the JSON schema): the reference hard-codes these in its
# sub-modules, and VGGT-1B uses exactly these values.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POSE_ENCODING_DIM = 9  # [t(3), quaternion xyzw(4), fov_h, fov_w]
DPT_HEAD_HIDDEN = 32  # width of the dense heads' output_conv2 hidden layer
DPT_POS_EMBED_RATIO = 0.1
DEFAULT_FRAMES_CHUNK_SIZE = 8

# Point tracks (vggt_core.tracks): query frames spread over the sequence, points in total, and
# how query points are picked.
DEFAULT_NUM_QUERY_FRAMES = 4
DEFAULT_MAX_QUERY_POINTS = 4096
QUERY_POINT_METHODS = ("grid", "sift")



def __getattr__(name: str) -> Any:
    # EXPORT_FORMATS and DEFAULT_EXPORT_FORMATS used to be listed here; the export registry
    # (vggt_core.export.registry, which imports no exporter) is now their one source. Looked up
    # on use, so that this bottom module does not import the registry when it is loaded.
    if name in ("EXPORT_FORMATS", "DEFAULT_EXPORT_FORMATS"):
        from .export import registry

        return registry.export_formats() if name == "EXPORT_FORMATS" else registry.default_export_formats()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class PatchEmbedConfig:
    """The DINOv2 ViT-L/14 (with registers) patch embedder; its width is ``embed_dim``."""

    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    init_values: float | None = 1.0
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0


@dataclass
class CameraHeadConfig:
    trunk_depth: int = 4
    num_heads: int = 16
    mlp_ratio: float = 4.0
    init_values: float | None = 0.01
    iters: int = 4


@dataclass
class DenseHeadConfig:
    """DPT settings shared by the depth and the point head."""

    features: int = 256
    out_channels: list[int] = field(default_factory=lambda: [256, 512, 1024, 1024])
    intermediate_layer_idx: list[int] = field(default_factory=lambda: [4, 11, 17, 23])


@dataclass
class TrackHeadConfig:
    features: int = 128
    out_channels: list[int] = field(default_factory=lambda: [256, 512, 1024, 1024])
    intermediate_layer_idx: list[int] = field(default_factory=lambda: [4, 11, 17, 23])
    iters: int = 4
    stride: int = 2
    corr_levels: int = 7
    corr_radius: int = 4
    hidden_size: int = 384
    updateformer_depth: int = 6
    updateformer_heads: int = 8
    num_virtual_tracks: int = 64
    max_scale: int = 518

    @property
    def min_image_side(self) -> int:
        """Smallest H or W (a multiple of 14) whose half-resolution feature map survives
        ``corr_levels - 1`` halvings with at least one cell (``avg_pool2d`` fails on less)."""
        side = 14
        while (side // self.stride) // (2 ** (self.corr_levels - 1)) < 1:
            side += 14
        return side


_SECTIONS = {
    "patch_embed": PatchEmbedConfig,
    "camera_head": CameraHeadConfig,
    "dense_head": DenseHeadConfig,
    "track_head": TrackHeadConfig,
}


@dataclass
class VGGTConfig:
    """Every size of a VGGT model. The defaults are VGGT-1B (facebook/VGGT-1B)."""

    img_size: int = DEFAULT_IMAGE_SIZE
    patch_size: int = PATCH_SIZE
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qk_norm: bool = True
    rope_freq: float = 100.0
    init_values: float | None = 0.01
    patch_embed: PatchEmbedConfig = field(default_factory=PatchEmbedConfig)
    camera_head: CameraHeadConfig = field(default_factory=CameraHeadConfig)
    dense_head: DenseHeadConfig = field(default_factory=DenseHeadConfig)
    track_head: TrackHeadConfig = field(default_factory=TrackHeadConfig)
    enable_camera: bool = True
    enable_depth: bool = True
    enable_point: bool = True
    enable_track: bool = True

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------- derived
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def patch_start_idx(self) -> int:
        """Index of the first patch token in a frame's sequence: after 1 camera + R register tokens."""
        return 1 + self.num_register_tokens

    @property
    def used_layer_indices(self) -> list[int]:
        """Aggregator layers that some enabled head reads; only these are kept in memory."""
        used = set()
        if self.enable_camera:
            used.add(self.depth - 1)
        if self.enable_depth or self.enable_point:
            used.update(self.dense_head.intermediate_layer_idx)
        if self.enable_track:
            used.update(self.track_head.intermediate_layer_idx)
        return sorted(used)

    # ----------------------------------------------------------------------------- (de)serialise
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "VGGTConfig":
        if not isinstance(values, dict):
            raise ValueError(f"VGGT config must be a dict, got {type(values).__name__}")
        top_keys = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in top_keys:
                raise ValueError(f"unknown VGGT config key {key!r}; known keys: {sorted(top_keys)}")
            if key in _SECTIONS:
                kwargs[key] = _section_from_dict(key, _SECTIONS[key], value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "VGGTConfig":
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        from .atomic_files import atomic_write_bytes  # every file is written through it

        atomic_write_bytes(Path(path), json.dumps(self.to_dict(), indent=2).encode("utf-8"))

    # ----------------------------------------------------------------------------- checks
    def validate(self) -> None:
        _require_positive_int(self, "", ["img_size", "patch_size", "embed_dim", "depth", "num_heads",
                                         "num_register_tokens"], allow_zero={"num_register_tokens"})
        _require_positive_number(self, "", ["mlp_ratio", "rope_freq"])
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.head_dim % 4:
            raise ValueError(f"num_heads: head_dim = embed_dim/num_heads = {self.head_dim} must be divisible "
                             "by 4 for the 2-D rotary position embedding")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})")

        pe = self.patch_embed
        _require_positive_int(pe, "patch_embed.", ["depth", "num_heads"])
        _require_positive_number(pe, "patch_embed.", ["mlp_ratio"])
        if self.embed_dim % pe.num_heads:
            raise ValueError(f"patch_embed.num_heads ({pe.num_heads}) must divide embed_dim ({self.embed_dim})")

        cam = self.camera_head
        _require_positive_int(cam, "camera_head.", ["trunk_depth", "num_heads", "iters"])
        _require_positive_number(cam, "camera_head.", ["mlp_ratio"])
        if (2 * self.embed_dim) % cam.num_heads:
            raise ValueError(f"camera_head.num_heads ({cam.num_heads}) must divide 2*embed_dim ({2 * self.embed_dim})")

        for name in ("dense_head", "track_head"):
            section = getattr(self, name)
            _require_positive_int(section, f"{name}.", ["features"])
            _check_dpt_lists(name, section, self.depth)
        if self.dense_head.features % 8:
            # features//2 receives the UV embedding, whose half must be even.
            raise ValueError(f"dense_head.features ({self.dense_head.features}) must be divisible by 8")

        tr = self.track_head
        _require_positive_int(tr, "track_head.", ["iters", "stride", "corr_levels", "hidden_size",
                                                  "updateformer_depth", "updateformer_heads",
                                                  "num_virtual_tracks", "max_scale"])
        if not isinstance(tr.corr_radius, int) or tr.corr_radius < 0:
            raise ValueError(f"track_head.corr_radius must be a non-negative integer, got {tr.corr_radius!r}")
        if tr.features % 4:
            raise ValueError(f"track_head.features ({tr.features}) must be divisible by 4")
        if tr.hidden_size % tr.updateformer_heads:
            raise ValueError(f"track_head.updateformer_heads ({tr.updateformer_heads}) must divide "
                             f"track_head.hidden_size ({tr.hidden_size})")
        if tr.stride != 2:
            raise ValueError("track_head.stride must be 2: the track feature map is computed at half resolution")


def _section_from_dict(section_name: str, section_cls: type, values: Any):
    if isinstance(values, section_cls):
        return values
    if not isinstance(values, dict):
        raise ValueError(f"VGGT config key {section_name!r} must be a dict")
    known = {f.name for f in dataclasses.fields(section_cls)}
    for key in values:
        if key not in known:
            raise ValueError(f"unknown VGGT config key {section_name}.{key!r}; known keys: {sorted(known)}")
    return section_cls(**values)


def _require_positive_int(obj, prefix: str, names: list[str], allow_zero: set[str] = frozenset()) -> None:
    for name in names:
        value = getattr(obj, name)
        minimum = 0 if name in allow_zero else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"VGGT config key {prefix}{name} must be an integer >= {minimum}, got {value!r}")


def _require_positive_number(obj, prefix: str, names: list[str]) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"VGGT config key {prefix}{name} must be a positive number, got {value!r}")


def _check_dpt_lists(name: str, section, depth: int) -> None:
    channels = section.out_channels
    if not isinstance(channels, (list, tuple)) or len(channels) != 4 or not all(
            isinstance(c, int) and c > 0 for c in channels):
        raise ValueError(f"VGGT config key {name}.out_channels must be 4 positive integers, got {channels!r}")
    if name == "dense_head" and any(c % 4 for c in channels):
        raise ValueError(f"VGGT config key {name}.out_channels must be divisible by 4 (UV position embedding), "
                         f"got {channels!r}")
    indices = section.intermediate_layer_idx
    if not isinstance(indices, (list, tuple)) or len(indices) != 4 or not all(isinstance(i, int) for i in indices):
        raise ValueError(f"VGGT config key {name}.intermediate_layer_idx must be 4 integers, got {indices!r}")
    for index in indices:
        if not 0 <= index < depth:
            raise ValueError(f"VGGT config key {name}.intermediate_layer_idx: index {index} is not in "
                             f"[0, depth={depth})")
    section.out_channels = list(channels)
    section.intermediate_layer_idx = list(indices)


def tiny_config() -> VGGTConfig:
    """A ~0.5M-parameter VGGT of the full architecture, for development and tests (untrained)."""
    return VGGTConfig.from_dict({
        "embed_dim": 32, "depth": 4, "num_heads": 2,
        "patch_embed": {"depth": 2, "num_heads": 2},
        "camera_head": {"trunk_depth": 1, "num_heads": 2},
        "dense_head": {"features": 16, "out_channels": [8, 16, 32, 32], "intermediate_layer_idx": [0, 1, 2, 3]},
        "track_head": {"features": 16, "out_channels": [8, 16, 32, 32], "intermediate_layer_idx": [0, 1, 2, 3],
                       "iters": 2, "corr_levels": 3, "corr_radius": 2, "hidden_size": 32,
                       "updateformer_depth": 1, "updateformer_heads": 2, "num_virtual_tracks": 4},
    })
