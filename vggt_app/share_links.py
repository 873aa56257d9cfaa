"""Share links: ``?r=<id>`` plus the view settings that differ from the page's defaults, so
whoever opens a link sees what its sender saw. Old links (fewer keys) keep opening."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import gradio as gr

from vggt_core import InputError
from vggt_core.filtering import ViewSettings

# The URL query parameter that carries a reconstruction id in a share link.
SHARE_QUERY_PARAMETER = "r"

# The app shows at most this many points by default: rendering the GLB stays well under a
# second for 50 frames, and browsers stay responsive. Users can raise it.
DEFAULT_MAX_POINTS = 1_000_000
MAX_POINTS_LIMIT = 5_000_000
# What the page's view controls show before anyone touches them.
DEFAULT_VIEW_SETTINGS = ViewSettings(max_points=DEFAULT_MAX_POINTS)


def _query_flag(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(f"expected 0 or 1, got {text!r}")
    return text == "1"


# A share link carries the view besides the id (``?r=<id>&conf=90&branch=point``), so whoever
# opens it sees what the sender saw. Only settings that differ from the page's defaults are
# written: the usual link stays short. Query key -> (ViewSettings field, parser).
VIEW_QUERY_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "conf": ("confidence_threshold", float),
    "branch": ("branch", str),
    "frame": ("frame_index", int),
    "cameras": ("show_cameras", _query_flag),
    "black": ("filter_black_background", _query_flag),
    "white": ("filter_white_background", _query_flag),
    "points": ("max_points", int),
    "sky": ("hide_sky", _query_flag),
}


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def view_query(settings: ViewSettings) -> dict[str, str]:
    """The link parameters of ``settings`` that differ from :data:`DEFAULT_VIEW_SETTINGS`."""
    query = {}
    for key, (field, _) in VIEW_QUERY_FIELDS.items():
        value = getattr(settings, field)
        if value != getattr(DEFAULT_VIEW_SETTINGS, field) and value is not None:
            query[key] = _query_value(value)
    return query


def view_settings_from_query(query: Mapping[str, str], base: ViewSettings,
                             num_frames: int) -> tuple[ViewSettings, list[str]]:
    """``base`` with the view parameters of a share link applied, and the keys that were
    ignored because their values are invalid (a hand-edited link still opens the scene)."""
    changes: dict[str, Any] = {}
    ignored = []
    for key, (field, parse) in VIEW_QUERY_FIELDS.items():
        if key not in query:
            continue
        try:
            value = parse(query[key])
            dataclasses.replace(base, **{field: value})  # ViewSettings validates itself
            if field == "frame_index" and not value < num_frames:
                raise ValueError("no such frame")
            if field == "max_points" and not value <= MAX_POINTS_LIMIT:
                raise ValueError("too many points")
        except (ValueError, InputError):
            ignored.append(key)
            continue
        changes[field] = value
    return dataclasses.replace(base, **changes), ignored


def share_link(page_url: str, recon_id: str, settings: ViewSettings | None = None, refined: bool = False) -> str:
    """``refined`` adds ``refined=1``: the link says its cameras were refined (opening ignores it)."""
    query = {SHARE_QUERY_PARAMETER: recon_id, **(view_query(settings) if settings is not None else {})}
    query.update({"refined": "1"} if refined else {})
    return f"{page_url.split('?')[0].split('#')[0]}?{urlencode(query)}"


def share_link_query(text: str | None) -> dict[str, str]:
    """The query parameters of a pasted share link (none for a bare id)."""
    text = (text or "").strip()
    if "?" not in text:
        return {}
    return {key: values[0] for key, values in parse_qs(urlsplit(text).query).items()}


def page_url_from_request(request: gr.Request | None, public_url: str | None) -> str:
    """The address of the page the user is on, for share links.

    Prefers the configured public URL; then the browser's Referer (the page itself, path
    included, which is right behind path-based proxies); then the Host headers.
    """
    if public_url:
        return public_url
    headers = {key.lower(): value for key, value in dict(getattr(request, "headers", {}) or {}).items()}
    referer = headers.get("referer", "")
    if referer.startswith(("http://", "https://")):
        return referer
    host = (headers.get("x-forwarded-host") or headers.get("host") or "localhost").split(",")[0].strip()
    scheme = (headers.get("x-forwarded-proto") or "http").split(",")[0].strip()
    return f"{scheme}://{host}/"


def reconstruction_id_from_text(text: str | None) -> str:
    """Accept either a bare id or a whole share link, and return the id part."""
    text = (text or "").strip()
    if "?" in text or "://" in text:
        return share_link_query(text).get(SHARE_QUERY_PARAMETER, "")
    return text
