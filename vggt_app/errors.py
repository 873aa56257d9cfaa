"""How failures reach a person: a sentence, never a traceback, and on the page never a wiped scene.

On the page (the browser's own client marks its calls with the ``x-gradio-user: app`` header) a
failed event shows its message as a toast and leaves every output as it was: raising
``gr.Error`` would put an "Error" badge on all of the event's outputs (the viewer, the share
link, the galleries) and some of them stay broken until the next change. API clients
(``gradio_client``) get the same sentence as an error, as an API must.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr
from gradio.context import LocalContext

from vggt_core import FrameLimitError, InputError, WeightsUnavailableError
from vggt_core.sky import SkyModelUnavailableError

from .store.derived_cache import CacheFullError
from .store.entries import StoreError

logger = logging.getLogger("vggt_app")

GENERIC_ERROR_MESSAGE = ("Something went wrong on the server while handling this request. "
                         "It has been logged; please try again, perhaps with fewer or smaller files.")
CHECKPOINT_HINT = ("To run without downloading, start the app with a local checkpoint: "
                   "use --checkpoint /path/to/model.pt (or set VGGT_CHECKPOINT).")


def user_message(text: str) -> str:
    """Gradio renders error messages as HTML; file names come from users, so escape them."""
    return html.escape(text, quote=False)


def called_from_the_page() -> bool:
    """Whether the running event was sent by the app's own page (not by an API client)."""
    request = LocalContext.request.get(None)
    headers = getattr(request, "headers", None) or {}
    try:
        return headers.get("x-gradio-user") == "app"
    except AttributeError:
        return False


def answer(message: str, *, sticky: bool = False) -> Any:
    """The failed event's result: on the page a warning toast and every output unchanged
    (``gr.skip()``); for API clients an error with the same message."""
    if called_from_the_page():
        gr.Warning(message, duration=None if sticky else 10)
        return gr.skip()
    raise gr.Error(message, duration=None if sticky else 10)


def warn_user(message: str, *, sticky: bool = True) -> None:
    """Something the person should know although their request goes on (the device group
    stopped, say): a toast on the page, a log message for API clients (gradio_client's status
    updates). Logged as a warning too."""
    logger.warning("told the user: %s", message)
    gr.Warning(user_message(message), duration=None if sticky else 10)


def show_user_errors(handler: Callable) -> Callable:
    """Turn every failure of an event handler into a message: never a traceback, and on the page
    the outputs keep their values (see :func:`answer`). Expected mistakes are logged as one line."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error as error:
            return answer(str(error.message))
        except WeightsUnavailableError as error:
            message = str(error)
            if "--checkpoint" not in message and not isinstance(error, SkyModelUnavailableError):
                message = f"{message}\n{CHECKPOINT_HINT}"
            logger.warning("weights unavailable: %s", error)
            return answer(user_message(message), sticky=True)
        except (FrameLimitError, InputError, StoreError, CacheFullError) as error:
            logger.info("%s: %s", handler.__name__, error)
            return answer(user_message(str(error)))
        except Exception:
            logger.exception("unexpected error in %s", handler.__name__)
            return answer(GENERIC_ERROR_MESSAGE)

    return wrapper


__all__ = ["CHECKPOINT_HINT", "GENERIC_ERROR_MESSAGE", "answer", "called_from_the_page", "show_user_errors",
           "user_message", "warn_user"]
