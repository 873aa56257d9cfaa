"""Screening uploads: every file the model can read is kept, every other one is named with a
reason (no server path, no raw exception text), using the preprocessing's own size rules."""

from __future__ import annotations

import av
import numpy as np
from PIL import Image

from vggt_core.images import load_images
from vggt_core.input_screening import screen_input_files


def test_usable_and_rejected_files_in_order(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (64, 48), (10, 200, 30, 128)).save(rgba)
    gray16 = tmp_path / "depth16.png"
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)).save(gray16)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    Image.new("RGB", (64, 32), "blue").save(rotated, exif=exif)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    small = tmp_path / "icon.png"
    Image.new("RGB", (20, 10), "red").save(small)
    truncated = tmp_path / "cut.jpg"
    good_jpeg = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(good_jpeg)
    truncated.write_bytes(good_jpeg.read_bytes()[:2000])
    empty_video = tmp_path / "empty.avi"
    with av.open(str(empty_video), "w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()

    screening = screen_input_files([rgba, text, gray16, small, rotated, truncated, empty_video])
    assert screening.usable == [str(rgba), str(gray16), str(rotated)]
    # What the screening lets through, the model's loader really reads.
    assert load_images(screening.usable).shape[0] == 3
    reasons = {item.name: item.reason for item in screening.rejected}
    assert list(reasons) == ["notes.png", "icon.png", "cut.jpg", "empty.avi"]
    assert reasons["notes.png"].startswith("not a readable image file")
    assert "20x10" in reasons["icon.png"] and "at least 14 pixels" in reasons["icon.png"]
    assert "no decodable frames" in reasons["empty.avi"]
    sentence = screening.rejected_sentence()
    assert sentence.startswith("Left out 4 files: notes.png (") and sentence.endswith(").")
    assert str(tmp_path) not in sentence and "Errno" not in sentence and "cannot identify" not in sentence


def test_nothing_rejected_says_nothing(tmp_path):
    photo = tmp_path / "a.png"
    Image.new("RGB", (30, 30)).save(photo)
    screening = screen_input_files([photo])
    assert screening.usable == [str(photo)] and screening.rejected == [] and screening.rejected_sentence() == ""
