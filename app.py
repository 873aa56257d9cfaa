"""VGGT Reconstruct, the browser app (the Hugging Face Space's entry point): photos or a video in;
cameras, depth maps, a 3-D point cloud and a share link out.

    python app.py                                # http://127.0.0.1:7860, weights from the Hub
    python app.py --checkpoint /path/model.pt    # a local checkpoint, no network needed
    python app.py --help                         # every flag and its environment variable

Importing this module starts nothing: ``build_app(settings)`` returns the ``gr.Blocks`` and
``main(argv)`` launches it. The app's code lives in the ``vggt_app`` package beside this file
(see its docstring and docs/architecture.md); the reconstruction itself is ``vggt_core``.
"""

from vggt_app.main import build_app, main, open_store
from vggt_app.settings import AppSettings, parse_settings

__all__ = ["AppSettings", "build_app", "main", "open_store", "parse_settings"]

if __name__ == "__main__":
    main()
