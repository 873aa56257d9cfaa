"""The server process: settings, the store, the page, launch, and a clean stop on SIGTERM."""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder as gradio_upload_folder

from vggt_core import RANDOM_TINY_CHECKPOINT

from .page import build_page, build_service, launch_options
from .settings import APP_DIR, AppSettings, parse_settings
from .store.backends import StorageConfigurationError, open_entry_storage
from .store.client_quota import ClientQuota
from .store.derived_cache import remove_stale_process_folders
from .store.entries import ReconstructionStore
from .upload_route import upload_cap_app_kwargs

logger = logging.getLogger("vggt_app")


def derived_files_folder() -> Path:
    """A fresh folder for this process's derived files inside Gradio's cache folder (so Gradio
    serves them without copying), after removing those of processes that crashed."""
    parent = Path(gradio_upload_folder()) / "vggt-derived"
    remove_stale_process_folders(parent)
    folder = parent / f"{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir(parents=True)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def storage_cache_folder() -> Path:
    """This process's local cache of a URL storage's entries (see vggt_app.store.local_cache),
    after removing those of processes that crashed."""
    parent = APP_DIR / "app-data" / "storage-cache"
    remove_stale_process_folders(parent)
    folder = parent / f"{os.getpid()}-{secrets.token_hex(4)}"
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def open_store(settings: AppSettings) -> ReconstructionStore:
    """The reconstruction store of ``settings`` (a folder or a URL storage), with client shares
    and rate limits, pruned once. :func:`main` then prunes it in the background."""
    storage = open_entry_storage(settings.storage_location, cache_folder=storage_cache_folder(),
                                 cache_max_bytes=int(settings.storage_cache_mb * 1e6),
                                 allow_public=settings.allow_public_store)
    quota = ClientQuota(trust_forwarded_for=settings.trust_forwarded_for,
                        model_runs_per_hour=settings.client_runs_per_hour,
                        derived_per_hour=settings.client_derived_per_hour)
    store = ReconstructionStore(storage=storage, ttl_seconds=settings.storage_ttl_hours * 3600,
                                max_bytes=int(settings.storage_max_mb * 1e6),
                                client_share_bytes=settings.client_share_bytes, client_quota=quota)
    store.prune()
    return store


def build_app(settings: AppSettings, store: ReconstructionStore | None = None) -> gr.Blocks:
    """The whole page (with a store of its own unless given one). Starts nothing."""
    store = store if store is not None else open_store(settings)
    return build_page(build_service(settings, store, derived_files_folder()))


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX`` would), unless the operator set that.

    Every worker thread otherwise gets its own arena, and the large short-lived numpy arrays of
    view changes leave each one fragmented: in the 8-user soak test RSS reached 2.6 GB after 4
    minutes (and kept growing) without this, 1.8 GB (flat) with it. A no-op off glibc. Returns
    whether the cap was set.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, arenas))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(argv)
    limit_malloc_arenas()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.is_untrained:
        logger.warning("running with %s: an untrained model, results are meaningless", RANDOM_TINY_CHECKPOINT)
    try:
        store = open_store(settings)
    except StorageConfigurationError as error:  # a bad --storage: say why, no traceback
        raise SystemExit(f"app.py: {error}") from None
    store.start_pruning(settings.prune_interval_s)  # stopped by store.close()
    service = build_service(settings, store, derived_files_folder())
    demo = build_page(service)
    demo.queue(max_size=32)
    exit_cleanly_on_sigterm()
    try:
        # quiet: Gradio would advise "set share=True in launch()"; this app's flag is --share.
        _, local_url, share_url = demo.launch(server_name=settings.host, server_port=settings.port,
                                              share=settings.share, prevent_thread_lock=True, quiet=True,
                                              app_kwargs=upload_cap_app_kwargs(settings.upload_limits,
                                                                               settings.max_upload_files),
                                              **launch_options(settings))
        logger.info("running on %s%s", local_url, f" and {share_url}" if share_url else "")
        print(f"* Running on {local_url}" + (f" and {share_url}" if share_url else "") + " (Ctrl+C stops)", flush=True)
        demo.block_thread()
    finally:
        demo.close()  # no new requests; then every save already handed to the writers completes
        service.models.close()  # the device group's worker processes, if any
        store.close()
        logger.info("stopped; every reconstruction in flight is saved")


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM (a Space restart, ``kill``) becomes ``SystemExit(0)`` in the main thread, so
    :func:`main` finishes the store's writes and Python shuts down normally (no share link it
    has shown breaks). pycolmap is imported first because glog, inside it, replaces the SIGTERM
    handler with its "*** Aborted ... stack trace" one when it is first imported, and a later
    import from a worker thread (first COLMAP export or bundle adjustment) could not be undone
    there: only the main thread may set signal handlers."""
    try:
        import pycolmap  # noqa: F401
    except ImportError:
        pass

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the writes short
        logger.info("SIGTERM: finishing the reconstructions being saved, then exiting")
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)


__all__ = ["build_app", "derived_files_folder", "exit_cleanly_on_sigterm", "limit_malloc_arenas", "main", "open_store"]
