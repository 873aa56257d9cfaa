"""The app's panels, one module each; ``app.py`` builds the page and wires them together.

A panel module holds only Gradio layout and event handlers: anything a CLI or notebook user would
also need lives in ``vggt_core``.
"""
