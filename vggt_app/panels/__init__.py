"""The page's panels, one module each; :mod:`vggt_app.page` places and wires them.

A panel module holds only Gradio layout and event handlers: anything a CLI or notebook user would
also need lives in ``vggt_core``, and what several panels share lives in ``vggt_app.service``.
"""
