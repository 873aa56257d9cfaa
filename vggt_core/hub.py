"""Files from the Hugging Face Hub (weights, the sky model) that fail fast without a network.

``huggingface_hub`` retries each request with a 10 s timeout, so on a machine without a network
(or behind a firewall that drops packets) the first download used to wait about 47 s before it
gave up. We ask the Hub once, with a short timeout, whether it answers; if it does not (or
``HF_HUB_OFFLINE`` is set) only the local cache is used, which answers at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["HUB_REACHABILITY_TIMEOUT_S", "hub_endpoint", "hub_is_offline", "hub_is_reachable", "hub_download"]

# Long enough for a slow but working connection to answer a HEAD request, short enough that a
# person waiting for the error barely notices.
HUB_REACHABILITY_TIMEOUT_S = 3.0
# A reachability answer is reused this long: one model load asks for up to three files.
_REACHABILITY_CACHE_S = 30.0
_DEFAULT_ENDPOINT = "https://huggingface.co"

_lock = threading.Lock()
_last_answer: dict[str, tuple[float, bool]] = {}


def hub_endpoint() -> str:
    """The Hub's address: ``HF_ENDPOINT`` if set (read now, not when huggingface_hub was imported)."""
    return (os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT).rstrip("/")


def hub_is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_is_reachable(timeout_s: float = HUB_REACHABILITY_TIMEOUT_S) -> bool:
    """True when the Hub answers an HTTP request within ``timeout_s`` (any status counts)."""
    endpoint = hub_endpoint()
    now = time.monotonic()
    with _lock:
        cached = _last_answer.get(endpoint)
        if cached is not None and now - cached[0] < _REACHABILITY_CACHE_S:
            return cached[1]
    request = urllib.request.Request(endpoint + "/api/health", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            reachable = True
    except urllib.error.HTTPError:
        reachable = True  # it answered, if only with an error status
    except (urllib.error.URLError, OSError, ValueError) as error:
        logger.info("the Hugging Face Hub at %s did not answer within %g s (%s)", endpoint, timeout_s, error)
        reachable = False
    with _lock:
        _last_answer[endpoint] = (time.monotonic(), reachable)
    return reachable


def forget_reachability() -> None:
    """Ask again next time (tests; a server whose network came back)."""
    with _lock:
        _last_answer.clear()


def hub_download(repo_id: str, filename: str, revision: str | None = None, *, cache_only: bool = False) -> Path:
    """``hf_hub_download`` (cached); with ``cache_only`` a look-up in the local cache alone.

    Raises:
        FileNotFoundError: ``cache_only`` and the file is not cached. Otherwise huggingface_hub's errors.
    """
    if cache_only:
        # Not hf_hub_download(local_files_only=True): it still fetches a telemetry registry from
        # the endpoint first (huggingface_hub 1.x/2.x), a 3 s wait on a network that drops packets.
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
        raise FileNotFoundError(f"{filename} of {repo_id} is not in the local Hugging Face cache")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, revision=revision))


def offline_reason() -> str | None:
    """Why only the cache can be used (``HF_HUB_OFFLINE``, or no answer from the Hub), or None."""
    if hub_is_offline():
        return "HF_HUB_OFFLINE is set"
    if not hub_is_reachable():
        return f"the Hugging Face Hub ({hub_endpoint()}) did not answer within {HUB_REACHABILITY_TIMEOUT_S:g} s"
    return None
