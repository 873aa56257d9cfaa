"""Focal lengths in pixels from EXIF tags that Pillow writes."""

from __future__ import annotations

import math

import pytest
from PIL import ExifTags, Image, TiffImagePlugin

from vggt_core import exif_focal_length_px
from vggt_core.exif import focal_length_px_from_35mm, shown_size
from vggt_core.images import load_images

TAG = ExifTags.Base


def write_photo(path, tags: dict | None = None, orientation: int | None = None, size=(400, 300)):
    """A JPEG of ``size`` (stored, before rotation) with the given Exif-IFD tags."""
    image = Image.new("RGB", size, (120, 90, 60))
    if tags is None and orientation is None:
        image.save(path)
        return path
    exif = Image.Exif()
    if orientation is not None:
        exif[TAG.Orientation] = orientation
    sub_ifd = exif.get_ifd(ExifTags.IFD.Exif)
    for tag, value in (tags or {}).items():
        sub_ifd[tag] = TiffImagePlugin.IFDRational(value) if isinstance(value, float) else value
    image.save(path, exif=exif)
    return path


def test_35mm_equivalent_uses_the_diagonal(tmp_path):
    path = write_photo(tmp_path / "a.jpg", {TAG.FocalLengthIn35mmFilm: 26})
    assert exif_focal_length_px(path) == pytest.approx(26 * 500 / 43.267, rel=1e-4)
    assert focal_length_px_from_35mm(26, 400, 300) == pytest.approx(26 * math.hypot(400, 300) / 43.267, rel=1e-4)


@pytest.mark.parametrize("orientation", [None, 1, 6, 8])
def test_focal_plane_resolution_with_rotated_and_unrotated_photos(tmp_path, orientation):
    # 4.2 mm lens, 1000 pixels per cm = 100 px/mm: 420 px, whichever way the photo is shown.
    tags = {TAG.FocalLength: 4.2, TAG.FocalPlaneXResolution: 1000.0, TAG.FocalPlaneResolutionUnit: 3,
            TAG.ExifImageWidth: 400}
    path = write_photo(tmp_path / "a.jpg", tags, orientation)
    assert exif_focal_length_px(path) == pytest.approx(420.0, rel=1e-6)
    # The photo as the model sees it is upright: 300 wide for a quarter turn.
    expected_size = (300, 400) if orientation in (6, 8) else (400, 300)
    assert shown_size(path) == expected_size
    _, transforms = load_images([path], return_transforms=True)
    assert transforms[0].original_size == expected_size


def test_a_photo_saved_smaller_than_the_sensor_has_fewer_pixels_per_mm(tmp_path):
    tags = {TAG.FocalLength: 4.2, TAG.FocalPlaneXResolution: 1000.0, TAG.FocalPlaneResolutionUnit: 3,
            TAG.ExifImageWidth: 800}
    for orientation in (None, 6):  # the stored width is compared, not the shown one
        path = write_photo(tmp_path / f"small-{orientation}.jpg", tags, orientation)
        assert exif_focal_length_px(path) == pytest.approx(210.0, rel=1e-6)


def test_inches_are_the_default_resolution_unit(tmp_path):
    path = write_photo(tmp_path / "a.jpg", {TAG.FocalLength: 5.0, TAG.FocalPlaneXResolution: 2540.0})
    assert exif_focal_length_px(path) == pytest.approx(500.0, rel=1e-6)


def test_no_exif_gives_none(tmp_path):
    assert exif_focal_length_px(write_photo(tmp_path / "plain.jpg")) is None
    assert exif_focal_length_px(write_photo(tmp_path / "rotated-only.jpg", orientation=6)) is None
    (tmp_path / "not-an-image.jpg").write_bytes(b"hello")
    assert exif_focal_length_px(tmp_path / "not-an-image.jpg") is None
    assert exif_focal_length_px(tmp_path / "missing.jpg") is None


def test_zero_tags_never_give_a_focal_length(tmp_path):
    zero = {TAG.FocalLengthIn35mmFilm: 0, TAG.FocalLength: 0.0, TAG.FocalPlaneXResolution: 1000.0,
            TAG.FocalPlaneResolutionUnit: 3}
    assert exif_focal_length_px(write_photo(tmp_path / "zero.jpg", zero)) is None
    no_resolution = {TAG.FocalLength: 4.2, TAG.FocalPlaneXResolution: 0.0, TAG.FocalPlaneResolutionUnit: 3}
    assert exif_focal_length_px(write_photo(tmp_path / "zero-res.jpg", no_resolution)) is None
    no_unit = {TAG.FocalLength: 4.2, TAG.FocalPlaneXResolution: 1000.0, TAG.FocalPlaneResolutionUnit: 1}
    assert exif_focal_length_px(write_photo(tmp_path / "no-unit.jpg", no_unit)) is None
    # A zero 35 mm tag ("unknown") falls through to the lens focal length.
    fallback = {TAG.FocalLengthIn35mmFilm: 0, TAG.FocalLength: 4.2, TAG.FocalPlaneXResolution: 1000.0,
                TAG.FocalPlaneResolutionUnit: 3}
    assert exif_focal_length_px(write_photo(tmp_path / "fallback.jpg", fallback)) == pytest.approx(420.0)
