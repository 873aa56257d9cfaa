"""How failures reach a person on the page: a sentence, never a traceback."""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable

import gradio as gr

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


def show_user_errors(handler: Callable) -> Callable:
    """Turn every failure of an event handler into a message: never a traceback on the page."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except WeightsUnavailableError as error:
            message = str(error)
            if "--checkpoint" not in message and not isinstance(error, SkyModelUnavailableError):
                message = f"{message}\n{CHECKPOINT_HINT}"
            logger.warning("weights unavailable: %s", error)
            raise gr.Error(user_message(message), duration=None) from None
        except (FrameLimitError, InputError, StoreError, CacheFullError) as error:
            raise gr.Error(user_message(str(error))) from None
        except Exception:
            logger.exception("unexpected error in %s", handler.__name__)
            raise gr.Error(GENERIC_ERROR_MESSAGE) from None

    return wrapper


__all__ = ["CHECKPOINT_HINT", "GENERIC_ERROR_MESSAGE", "show_user_errors", "user_message"]
