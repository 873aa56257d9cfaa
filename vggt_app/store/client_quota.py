"""Who a request comes from, and how much of the server one client may take.

A client is its address: the TCP peer, or behind a trusted proxy (a Hugging Face Space) the
first address of ``X-Forwarded-For``. That header is set by whoever sends the request, so it is
believed only with ``--trust-forwarded-for``; otherwise anyone could pose as many clients.
Entries record a salted hash of the address (``client_key``), never the address itself.

Per client, model runs and derived scenes are rate-limited over a sliding window; the store
caps each client's bytes (``ReconstructionStore.client_share_bytes``, see entries.py).
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .entries import StoreError

# The kinds of work that are rate-limited, as the message names them.
MODEL_RUN = "reconstructions"
DERIVED_SCENE = "changed copies of scenes"


class RateLimitedError(StoreError):
    """A client asked for more than its rate allows; ``str()`` says when to try again."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def client_address(request: Any, trust_forwarded_for: bool) -> str | None:
    """The client's address of a Gradio request (None without one, e.g. in-process calls)."""
    if request is None:
        return None
    if trust_forwarded_for:
        headers: Mapping[str, str] = {key.lower(): value for key, value in
                                      dict(getattr(request, "headers", {}) or {}).items()}
        forwarded = headers.get("x-forwarded-for", "")
        first = forwarded.split(",")[0].strip()
        if first:
            return first
    client = getattr(request, "client", None)
    host = getattr(client, "host", None)
    return str(host) if host else None


@dataclass
class SlidingWindowLimit:
    """At most ``max_events`` per ``window_s`` seconds for each key."""

    max_events: int
    window_s: float
    clock: Callable[[], float] = time.monotonic
    _events: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, key: str) -> float:
        """Record one event for ``key``; returns 0, or (recording nothing) the seconds until one
        more would be admitted."""
        now = self.clock()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and now - events[0] >= self.window_s:
                events.popleft()
            if len(events) >= self.max_events:
                return events[0] + self.window_s - now
            events.append(now)
            # Keys with no recent event are dropped, so the table stays as small as the traffic.
            if len(self._events) > 10_000:
                for stale in [k for k, v in self._events.items() if not v or now - v[-1] >= self.window_s]:
                    del self._events[stale]
            return 0.0


class ClientQuota:
    """Client keys and per-client rate limits of one server."""

    def __init__(self, *, trust_forwarded_for: bool = False, model_runs_per_hour: int = 60,
                 derived_per_hour: int = 120, salt: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.trust_forwarded_for = trust_forwarded_for
        # Several servers of one store must hash alike for shares to add up: set VGGT_CLIENT_SALT.
        self.salt = salt or os.environ.get("VGGT_CLIENT_SALT") or secrets.token_hex(16)
        self.limits = {MODEL_RUN: SlidingWindowLimit(model_runs_per_hour, 3600.0, clock),
                       DERIVED_SCENE: SlidingWindowLimit(derived_per_hour, 3600.0, clock)}

    def client_key(self, request: Any) -> str | None:
        """A salted hash of the request's client address (None without a request)."""
        address = client_address(request, self.trust_forwarded_for)
        if address is None:
            return None
        return hashlib.sha256(f"{self.salt}:{address}".encode()).hexdigest()[:20]

    def admit(self, request: Any, kind: str) -> str | None:
        """The request's client key, once its rate for ``kind`` allows one more.

        Raises:
            RateLimitedError: "…please try again in N s."
        """
        key = self.client_key(request)
        if key is None:
            return None  # in-process calls (tests, the CLI) have no client to limit
        wait_s = self.limits[kind].admit(key)
        if wait_s > 0:
            seconds = max(1, math.ceil(wait_s))
            limit = self.limits[kind]
            raise RateLimitedError(
                f"You have made {limit.max_events} {kind} in the last {limit.window_s / 60:g} minutes, "
                f"the most one visitor may; please try again in {seconds} s.", seconds)
        return key


__all__ = ["DERIVED_SCENE", "MODEL_RUN", "ClientQuota", "RateLimitedError", "SlidingWindowLimit", "client_address"]
