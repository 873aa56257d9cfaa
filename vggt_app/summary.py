"""The summary under the viewer: what was reconstructed, what is shown, scale, intrinsics and
bundle adjustment; and the banner of an untrained server."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from vggt_core.intrinsics import focal_length_summary
from vggt_core.reconstruction import Reconstruction
from vggt_core import RANDOM_TINY_CHECKPOINT

from .renderer import RenderedView
from .store.entries import StoredReconstruction

REFINED_LINE = "Cameras refined by bundle adjustment"


def units_line(recon: Reconstruction) -> str:
    if recon.units is None:
        return "Units: VGGT's own (arbitrary) scale — set a real one under **Measure**."
    return f"Units: **{recon.units}** (real-world scale set from a measured distance)"


def scene_lines(recon: Reconstruction) -> list[str]:
    """Summary lines about the scene's scale and camera intrinsics."""
    return [units_line(recon), focal_length_summary(recon)]


def bundle_adjustment_lines(recon: Reconstruction, metadata: Mapping[str, Any]) -> list[str]:
    """What the summary says about bundle adjustment: nothing when it was not asked for; the
    report's numbers when it ran; its message when it failed (the scene is then unrefined)."""
    report = recon.info.get("bundle_adjustment") or metadata.get("bundle_adjustment")
    if not recon.info.get("cameras_refined") and not report:
        return []
    if not isinstance(report, Mapping):
        return [f"✅ **{REFINED_LINE}**"]
    if not report.get("refined", bool(recon.info.get("cameras_refined"))):
        message = str(report.get("message") or "it failed, so the input cameras are kept").strip()
        # One sentence: the report's message says why (and that the input cameras are kept).
        return [f"⚠️ Bundle adjustment not applied: {message}{'' if message.endswith('.') else '.'}"]
    line = (f"✅ **{REFINED_LINE}**: {int(report.get('tracks_used', 0)):,} tracks used, "
            f"{int(report.get('tracks_rejected', 0)):,} rejected")
    before, after = report.get("mean_error_before_px"), report.get("mean_error_after_px")
    if before is not None and after is not None:
        line += f" · mean reprojection error {float(before):.2f} px → {float(after):.2f} px"
    if report.get("seconds") is not None:
        line += f" · {float(report['seconds']):.1f} s"
    return [line]


def is_refined(recon: Reconstruction) -> bool:
    return bool(recon.info.get("cameras_refined"))



def summary_markdown(stored: StoredReconstruction, view: RenderedView) -> str:
    recon = stored.reconstruction
    height, width = recon.image_size_hw
    info = stored.metadata
    first_line = f"**{recon.num_frames} frames** at {width}×{height} px"
    if "seconds" in info:  # absent for reconstructions that were not made by this app's model run
        first_line += f" · reconstructed in {float(info['seconds']):.1f} s"
    if info.get("chunks"):  # "Process in chunks": say so, the scene is aligned from separate runs
        first_line += (f" in chunks of {int(info['chunks']['size'])} frames "
                       f"(overlap {int(info['chunks']['overlap'])})")
    lines = [
        first_line,
        f"**{view.num_points:,} points shown** · {view.num_cameras} cameras · "
        f"{'depth' if view.branch == 'depth' else 'point map'} branch, confidence ≥ {view.min_confidence:.3g}",
    ]
    lines += scene_lines(recon) + bundle_adjustment_lines(recon, info)
    if info.get("untrained"):
        lines.append("⚠️ Made with an **untrained** model: the geometry is meaningless.")
    return "  \n".join(lines)


def expiry_text(expires: datetime) -> str:
    return f"Anyone with this link can view this reconstruction until {expires:%Y-%m-%d %H:%M} UTC."


def untrained_banner_html() -> str:
    return ("<div class='vggt-banner' role='alert'>⚠️ <strong>Untrained model.</strong> This server runs "
            f"<code>--checkpoint {RANDOM_TINY_CHECKPOINT}</code>, a tiny network with random weights for "
            "development: every result it shows is meaningless. Start the app with real weights "
            "(the default <code>facebook/VGGT-1B</code> or a local file) for real reconstructions.</div>")


__all__ = ["REFINED_LINE", "bundle_adjustment_lines", "expiry_text", "is_refined", "scene_lines", "summary_markdown",
           "units_line", "untrained_banner_html"]
