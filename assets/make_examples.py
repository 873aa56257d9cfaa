"""Render the app's example photo sets into assets/examples/<scene>/ with vggt_core.synthetic.

    python assets/make_examples.py

The scenes are deterministic (same seed → same pixels), so re-running only rewrites identical
images. JPEG keeps the committed examples small (well under 1 MB for all of them).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

# Run as a script from anywhere: the repository root (which holds vggt_core) is one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vggt_core.synthetic import render_scene  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

# (folder name, scene, number of views, seed)
EXAMPLE_SCENES = (
    ("room", "room", 8, 0),
    ("table", "table", 8, 0),
)
# 518 wide like the model input; 392 = 28 patches of 14 pixels, a 4:3-ish photo.
WIDTH, HEIGHT = 518, 392
JPEG_QUALITY = 90


def write_example(folder: Path, scene_name: str, num_views: int, seed: int) -> list[Path]:
    """Render one scene and write its views as 000.jpg, 001.jpg, ... (replacing the folder)."""
    scene = render_scene(scene_name, num_views=num_views, width=WIDTH, height=HEIGHT, seed=seed)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    paths = []
    for index, pixels in enumerate(scene.images):
        path = folder / f"{index:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=JPEG_QUALITY, optimize=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR, help="folder to write into")
    args = parser.parse_args(argv)
    for folder_name, scene_name, num_views, seed in EXAMPLE_SCENES:
        paths = write_example(args.out / folder_name, scene_name, num_views, seed)
        size_kb = sum(path.stat().st_size for path in paths) / 1024
        print(f"{folder_name}: {len(paths)} views, {size_kb:.0f} KB")


if __name__ == "__main__":
    main()
