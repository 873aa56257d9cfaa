"""vggt_app: the Gradio server around :mod:`vggt_core` (``app.py`` is its entry point).

Rooms, from the bottom (each only imports those above it in this list, and ``vggt_core``):

- ``settings``: the command line / environment of the server (``AppSettings``).
- ``store/``: reconstructions under unguessable share ids (``entries``), where their bytes live
  (``storage``, ``backends``, ``local_cache``), the fast first view of a link (``first_view``),
  the bounded cache of derived files (``derived_cache``) and upload limits (``upload_limits``).
- ``runtime/``: the model (``models``: loaded once, ZeroGPU, the GPU slot) and the low-priority
  thread that runs forwards (``model_worker``).
- ``share_links``, ``view_controls``, ``summary``, ``errors``, ``uploads``: small presentation pieces.
- ``renderer``: GLB scenes, per-view pictures and download files of a stored reconstruction.
- ``service``: what the page's events do, independent of the layout.
- ``panels/``: one module per part of the page (inputs, viewer, measure, camera, tracks, memory, sky).
- ``page``: the layout that composes the panels; ``main``: the process (store, launch, SIGTERM).

See docs/architecture.md, *Package map*.
"""
