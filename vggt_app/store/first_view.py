"""What a share link shows first, stored small beside the full arrays.

Opening a link must not wait for the whole reconstruction: on a remote store (S3, a Hub dataset)
its arrays are hundreds of megabytes for 50 frames. So when a scene is first shown, the server
keeps what it showed as attachments of the entry: the rendered GLB, the depth/confidence
pictures and the summary text. A link whose view is that one opens from these few megabytes;
the full arrays are read only when the visitor changes the view (see docs/architecture.md,
*Storage*).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass

logger = logging.getLogger(__name__)

__all__ = ["FirstView", "save_first_view", "load_first_view", "FIRST_VIEW_FORMAT_VERSION"]

FIRST_VIEW_FORMAT_VERSION = 1
_JSON = "first-view.json"
_GLB = "first-view.glb"
_GALLERY = "first-view-gallery.zip"


@dataclass(frozen=True)
class FirstView:
    """The first view of a stored scene.

    Attributes:
        settings_key: identifies the view settings it shows (the app's settings digest).
        num_frames: frames of the scene (to validate a link's frame parameter without the arrays).
        summary: the summary text shown beside it.
        frame_choices: labels of the frame selector.
        glb: the rendered scene.
        gallery: ``(file name, caption, JPEG bytes)`` per picture, in display order.
        refined: whether bundle adjustment refined the scene's cameras, so that a link opened
            from the first view says so (``&refined=1``) as one opened from the full scene does;
            False for first views written before it was kept.
    """

    settings_key: str
    num_frames: int
    summary: str
    frame_choices: list[str]
    glb: bytes
    gallery: list[tuple[str, str, bytes]]
    refined: bool = False


def save_first_view(store, recon_id: str, view: FirstView) -> None:
    """Attach ``view`` to a stored entry; the JSON goes last, so a reader that finds it finds the
    rest. Raises the store's errors (``StoreError``)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # JPEGs do not compress
        for index, (_, _, data) in enumerate(view.gallery):
            archive.writestr(f"{index:05d}.jpg", data)
    store.save_attachment(recon_id, _GLB, view.glb)
    store.save_attachment(recon_id, _GALLERY, buffer.getvalue())
    description = {"version": FIRST_VIEW_FORMAT_VERSION, "settings_key": view.settings_key,
                   "num_frames": view.num_frames, "summary": view.summary,
                   "frame_choices": list(view.frame_choices),
                   "names": [name for name, _, _ in view.gallery],
                   "captions": [caption for _, caption, _ in view.gallery], "refined": bool(view.refined)}
    store.save_attachment(recon_id, _JSON, json.dumps(description).encode("utf-8"))


def load_first_view(store, recon_id: str) -> FirstView | None:
    """The entry's first view, or None when it has none (an older entry, or one whose first view
    could not be written) or it is unreadable: callers then load the full reconstruction.
    Raises the store's errors for an unknown or expired id or a storage error."""
    text = store.load_attachment(recon_id, _JSON)
    if text is None:
        return None
    try:
        description = json.loads(text.decode("utf-8"))
        if description.get("version") != FIRST_VIEW_FORMAT_VERSION:
            return None
        glb = store.load_attachment(recon_id, _GLB)
        gallery_bytes = store.load_attachment(recon_id, _GALLERY)
        if glb is None or gallery_bytes is None:
            return None
        with zipfile.ZipFile(io.BytesIO(gallery_bytes)) as archive:
            pictures = [archive.read(name) for name in sorted(archive.namelist())]
        names = [str(name) for name in description["names"]]
        captions = [str(caption) for caption in description["captions"]]
        if not len(names) == len(captions) == len(pictures):
            return None
        return FirstView(settings_key=str(description["settings_key"]), num_frames=int(description["num_frames"]),
                         summary=str(description["summary"]),
                         frame_choices=[str(choice) for choice in description["frame_choices"]],
                         glb=glb, gallery=list(zip(names, captions, pictures)),
                         refined=bool(description.get("refined", False)))
    except (ValueError, KeyError, TypeError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        logger.warning("the first view of %s is unreadable (%s); loading the full scene", recon_id, error)
        return None
