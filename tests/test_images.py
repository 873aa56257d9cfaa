"""Tests for vggt_core.images: reference-exact preprocessing, conversions, transforms, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vggt_core.errors import InputError
from vggt_core.images import (
    IMAGE_EXTENSIONS,
    FrameTransform,
    list_image_files,
    load_images,
    open_image_rgb,
)

# ----------------------------------------------------------------------------------------------
# An independent, deliberately plain re-statement of the reference steps (docs/architecture.md, *Image preprocessing*)
# ----------------------------------------------------------------------------------------------


def reference_batch(paths: list[Path], mode: str, target: int = 518) -> torch.Tensor:
    frames = []
    for path in paths:
        image = Image.open(path)
        if image.mode == "RGBA":
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, image)
        image = image.convert("RGB")
        width, height = image.size
        if mode == "pad" and width < height:
            new_height = target
            new_width = round(width * (target / height) / 14) * 14
        else:
            new_width = target
            new_height = round(height * (target / width) / 14) * 14
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
        frame = torch.tensor(np.array(image)).permute(2, 0, 1).float() / 255.0
        if mode == "crop" and new_height > target:
            start = (new_height - target) // 2
            frame = frame[:, start : start + target, :]
        if mode == "pad":
            pad_h = target - frame.shape[1]
            pad_w = target - frame.shape[2]
            frame = F.pad(frame, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=1.0)
        frames.append(frame)
    max_h = max(frame.shape[1] for frame in frames)
    max_w = max(frame.shape[2] for frame in frames)
    padded = []
    for frame in frames:
        pad_h = max_h - frame.shape[1]
        pad_w = max_w - frame.shape[2]
        padded.append(F.pad(frame, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=1.0))
    return torch.stack(padded)


def noise_image(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> Path:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    if mode == "RGBA":
        # Include fully transparent and fully opaque pixels, not only partial alpha.
        pixels[0, :, 3] = 0
        pixels[1, :, 3] = 255
    Image.fromarray(pixels, mode).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> dict[str, Path]:
    return {
        "landscape": noise_image(tmp_path / "landscape.png", 160, 120, seed=1),
        "portrait": noise_image(tmp_path / "portrait.png", 90, 150, seed=2),
        "rgba": noise_image(tmp_path / "rgba.png", 130, 100, mode="RGBA", seed=3),
        "square": noise_image(tmp_path / "square.png", 77, 77, seed=4),
        "wide_rgba": noise_image(tmp_path / "wide.png", 300, 70, mode="RGBA", seed=5),
    }


# ----------------------------------------------------------------------------------------------
# Bit-exact parity with the reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize("name", ["landscape", "portrait", "rgba", "square", "wide_rgba"])
def test_single_image_matches_reference_exactly(photos, mode, name):
    ours = load_images([photos[name]], mode=mode)
    expected = reference_batch([photos[name]], mode)
    assert ours.dtype == torch.float32
    assert ours.shape == expected.shape
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_mixed_batch_matches_reference_exactly(photos, mode, caplog):
    paths = [photos["landscape"], photos["portrait"], photos["rgba"], photos["wide_rgba"]]
    with caplog.at_level(logging.WARNING, logger="vggt_core.images"):
        ours = load_images(paths, mode=mode)
    assert torch.equal(ours, reference_batch(paths, mode))
    shapes_differ = mode == "crop"  # pad mode always gives target x target squares
    assert any("different shapes" in record.message for record in caplog.records) == shapes_differ


def test_known_shapes_in_crop_and_pad_modes(photos):
    # 160x120 -> 518 wide, round(120*518/160/14) = round(27.75) = 28 patches = 392 rows.
    landscape = load_images([photos["landscape"]], mode="crop")
    assert landscape.shape == (1, 3, round(120 * 518 / 160 / 14) * 14, 518) == (1, 3, 392, 518)
    portrait = load_images([photos["portrait"]], mode="crop")
    assert portrait.shape == (1, 3, 518, 518)  # 868 rows cropped to 518
    padded = load_images([photos["portrait"]], mode="pad")
    assert padded.shape == (1, 3, 518, 518)
    # 90*518/150/14 = 22.2 patches -> 308 wide, padded with 105 white columns on each side.
    assert torch.all(padded[0, :, :, :105] == 1.0) and torch.all(padded[0, :, :, 105 + 308 :] == 1.0)
    assert not torch.all(padded[0, :, :, 105] == 1.0)


def test_patch_rounding_ties_go_to_even(tmp_path):
    # 20 * (518 / 296) / 14 = 2.5 exactly: Python round gives 2 (28 rows), not 3 (42 rows).
    path = noise_image(tmp_path / "tie.png", 296, 20)
    assert load_images([path]).shape == (1, 3, 28, 518)


def test_custom_target_size_matches_reference(photos):
    paths = [photos["landscape"], photos["portrait"]]
    assert torch.equal(load_images(paths, mode="pad", target_size=224), reference_batch(paths, "pad", 224))
    assert load_images(paths, mode="crop", target_size=224).shape == (2, 3, 224, 224)


@pytest.mark.parametrize("bad_size", [0, -14, 500, 14.0, True])
def test_target_size_must_be_positive_multiple_of_14(photos, bad_size):
    with pytest.raises(ValueError, match="multiple of 14"):
        load_images([photos["square"]], target_size=bad_size)


def test_unknown_mode_rejected(photos):
    with pytest.raises(InputError, match="mode"):
        load_images([photos["square"]], mode="stretch")


def test_pil_and_array_inputs_equal_path_input(photos):
    path = photos["landscape"]
    from_path = load_images([path])
    pil_image = Image.open(path)
    array = np.asarray(Image.open(path))
    assert torch.equal(load_images([pil_image]), from_path)
    assert torch.equal(load_images([array]), from_path)
    assert torch.equal(load_images(path), from_path)  # a lone path is a batch of one
    _, transforms = load_images([pil_image, array], return_transforms=True)
    assert [transform.name for transform in transforms] == ["image_000", "image_001"]


def test_image_smaller_than_a_patch_is_refused_by_name(tmp_path):
    path = noise_image(tmp_path / "tiny.png", 20, 10)
    for mode in ("crop", "pad"):
        expect_input_error(lambda: load_images([path], mode=mode), "tiny.png", "20x10", "at least 14 pixels")


def test_smallest_image_holding_a_patch_is_accepted(tmp_path):
    path = noise_image(tmp_path / "small.png", 28, 14)
    # 14 * 518 / 28 / 14 = 18.5 -> 18 patches (ties to even) -> 252 rows.
    assert load_images([path], mode="crop").shape == (1, 3, 252, 518)
    assert load_images([path], mode="pad").shape == (1, 3, 518, 518)


# ----------------------------------------------------------------------------------------------
# Conversions beyond the reference
# ----------------------------------------------------------------------------------------------


def test_heic_phone_photos_open_in_a_folder_too(tmp_path):
    # Left half red, right half blue; HEIC is lossy, so colours are compared loosely.
    pixels = np.zeros((84, 112, 3), np.uint8)
    pixels[:, :56] = (230, 20, 20)
    pixels[:, 56:] = (20, 20, 230)
    folder = tmp_path / "phone"
    folder.mkdir()
    Image.fromarray(pixels).save(folder / "IMG_0001.HEIC", quality=95)
    assert list_image_files(folder) == [folder / "IMG_0001.HEIC"]
    batch, transforms = load_images([folder / "IMG_0001.HEIC"], return_transforms=True)
    assert batch.shape == (1, 3, 392, 518) and transforms[0].original_size == (112, 84)
    left, right = batch[0, :, :, :200].mean(dim=(1, 2)), batch[0, :, :, -200:].mean(dim=(1, 2))
    assert left[0] > 0.8 and left[2] < 0.2 and right[2] > 0.8 and right[0] < 0.2


def test_exif_orientation_is_applied(tmp_path):
    # Stored 60x40 with the left half red; orientation 6 means "turn 90° clockwise to view",
    # which brings the left half to the top.
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = (255, 0, 0)
    pixels[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)

    upright = np.asarray(open_image_rgb(path)).astype(int)
    assert upright.shape == (60, 40, 3)
    assert upright[:25, :, 0].mean() > 200 and upright[:25, :, 2].mean() < 50  # red on top
    assert upright[35:, :, 2].mean() > 200 and upright[35:, :, 0].mean() < 50  # blue below

    batch, transforms = load_images([path], return_transforms=True)
    assert transforms[0].original_size == (40, 60)
    assert batch.shape == (1, 3, 518, 518)  # portrait after rotation, so cropped


def test_orientation_8_turns_the_other_way(tmp_path):
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = 255
    exif = Image.Exif()
    exif[0x0112] = 8  # turn 90° counter-clockwise: the left half goes to the bottom
    path = tmp_path / "phone8.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    upright = np.asarray(open_image_rgb(path).convert("L")).astype(int)
    assert upright.shape == (60, 40)
    assert upright[35:].mean() > 200 and upright[:25].mean() < 50


def test_grayscale_becomes_equal_channels(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    path = tmp_path / "gray.png"
    Image.fromarray(gray, "L").save(path)
    rgb = np.asarray(open_image_rgb(path))
    assert rgb.shape == (8, 8, 3)
    for channel in range(3):
        assert np.array_equal(rgb[:, :, channel], gray)


def test_palette_image_with_transparency_is_flattened_on_white(tmp_path):
    image = Image.new("P", (4, 2))
    image.putpalette([0, 0, 0, 200, 30, 10] + [0] * (254 * 3))
    image.putdata([0, 1, 1, 0, 1, 0, 0, 1])
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    assert Image.open(path).mode == "P"
    rgb = np.asarray(open_image_rgb(path))
    assert tuple(rgb[0, 0]) == (255, 255, 255)  # transparent index -> white, not black
    assert tuple(rgb[0, 1]) == (200, 30, 10)


def test_palette_image_without_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 40, 50, 60] + [0] * (254 * 3))
    image.putdata([1, 0])
    rgb = np.asarray(open_image_rgb(image))
    assert rgb.tolist() == [[[40, 50, 60], [10, 20, 30]]]


def test_gray_with_alpha_is_flattened_on_white():
    image = Image.new("LA", (2, 1))
    image.putdata([(0, 0), (50, 255)])
    assert np.asarray(open_image_rgb(image)).tolist() == [[[255, 255, 255], [50, 50, 50]]]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode in {"I;16", "I"}
    rgb = np.asarray(open_image_rgb(path))
    assert rgb[0, :, 0].tolist() == [0, 100, 128, 255]
    assert np.array_equal(rgb[..., 0], rgb[..., 2])

    bright = tmp_path / "bright.png"
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(bright)
    # 40000/65535 of full brightness; clipping to 255 would give 1.0.
    assert load_images([bright]).mean().item() == pytest.approx(40000 / 65535, abs=1 / 255)


def test_big_endian_and_32_bit_integer_modes():
    big_endian = Image.frombytes("I;16B", (2, 1), np.array([0, 65535], ">u2").tobytes())
    assert np.asarray(open_image_rgb(big_endian))[0, :, 1].tolist() == [0, 255]
    wide = Image.fromarray(np.array([[257 * 3, 70000]], np.int32), "I")
    assert np.asarray(open_image_rgb(wide))[0, :, 1].tolist() == [3, 255]


def test_float_image_in_unit_range():
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    assert np.asarray(open_image_rgb(image))[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_and_ycbcr_convert_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))
    assert np.asarray(open_image_rgb(cmyk))[1, 1].tolist() == [255, 0, 0]
    path = tmp_path / "cmyk.tif"
    cmyk.save(path)
    assert np.asarray(open_image_rgb(path))[1, 1].tolist() == [255, 0, 0]

    ycbcr = Image.new("RGB", (3, 3), (20, 120, 220)).convert("YCbCr")
    # PIL's own YCbCr round trip is off by a few levels.
    assert np.abs(np.asarray(open_image_rgb(ycbcr)).astype(int) - [20, 120, 220]).max() <= 4


def test_array_inputs_of_several_layouts():
    gray = np.full((4, 5), 7, np.uint8)
    assert np.asarray(open_image_rgb(gray)).shape == (4, 5, 3)
    rgba = np.zeros((4, 5, 4), np.uint8)  # fully transparent black -> white
    assert np.all(np.asarray(open_image_rgb(rgba)) == 255)
    with pytest.raises(InputError, match="uint8"):
        open_image_rgb(np.zeros((4, 5, 3), np.float32))
    with pytest.raises(InputError, match="H, W"):
        open_image_rgb(np.zeros((4, 5, 2), np.uint8))


# ----------------------------------------------------------------------------------------------
# Frame transforms
# ----------------------------------------------------------------------------------------------


def marked_image(width: int, height: int, mark_x: int, mark_y: int, mark: int = 6) -> Image.Image:
    """Black image with a red ``mark`` x ``mark`` square whose centre is at (mark_x, mark_y)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    half = mark // 2
    pixels[mark_y - half : mark_y + half, mark_x - half : mark_x + half, 0] = 255
    return Image.fromarray(pixels)


def red_centroid(frame: torch.Tensor) -> np.ndarray:
    """(x, y) of the red mark in a processed frame [3, H, W], in continuous pixel coordinates."""
    redness = (frame[0] - frame[1]).clamp(min=0).numpy()  # white padding has zero redness
    redness = np.where(redness > 0.1, redness, 0.0)
    rows, cols = np.indices(redness.shape)
    total = redness.sum()
    assert total > 0, "mark not visible in the processed frame"
    return np.array([(redness * (cols + 0.5)).sum() / total, (redness * (rows + 0.5)).sum() / total])


# (width, height, mark centre): landscape, portrait (cropped in crop mode) and a thin strip.
MARK_CASES = [
    (400, 240, (100, 60)),
    (240, 400, (170, 220)),
    (300, 150, (250, 40)),
]


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize(("width", "height", "mark_xy"), MARK_CASES)
def test_marked_pixel_maps_back_to_where_it_was(mode, width, height, mark_xy):
    image = marked_image(width, height, *mark_xy)
    batch, (transform,) = load_images([image], mode=mode, return_transforms=True)
    found = transform.processed_to_original(red_centroid(batch[0]))
    # Half a processed pixel of slack, measured in original pixels.
    tolerance = 0.5 / min(transform.scale)
    assert np.abs(found - np.array(mark_xy)).max() < tolerance
    assert transform.original_size == (width, height)


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_marked_pixels_in_a_mixed_batch(mode):
    cases = MARK_CASES + [(500, 500, (260, 120))]
    images = [marked_image(width, height, *mark_xy) for width, height, mark_xy in cases]
    batch, transforms = load_images(images, mode=mode, return_transforms=True)
    for frame, transform, (_, _, mark_xy) in zip(batch, transforms, cases):
        found = transform.processed_to_original(red_centroid(frame))
        assert np.abs(found - np.array(mark_xy)).max() < 0.5 / min(transform.scale)


def test_transform_values_for_known_layouts():
    # Crop mode, portrait 240x400: resized to 518 x round(400*518/240/14)*14 = 518 x 868, then
    # rows 175..693 kept.
    _, (portrait,) = load_images([marked_image(240, 400, 120, 200)], return_transforms=True)
    assert portrait.scale == (518 / 240, 868 / 400)
    assert portrait.offset == (0.0, -175.0)

    # Mixed crop batch: the 400x240 frame (518 x 308 after resize) is padded by 105 rows at the top.
    images = [marked_image(400, 240, 100, 60), marked_image(240, 400, 120, 200)]
    _, (landscape, _) = load_images(images, return_transforms=True)
    assert landscape.scale == (518 / 400, 308 / 240)
    assert landscape.offset == (0.0, 105.0)

    # Pad mode, portrait: 518 high, round(240*518/400/14)*14 = 308 wide, 105 columns each side.
    _, (padded,) = load_images([marked_image(240, 400, 120, 200)], mode="pad", return_transforms=True)
    assert padded.offset == (105.0, 0.0)
    # The processed content's corners land on the photo's corners.
    corners = padded.processed_to_original([[105.0, 0.0], [105.0 + 308, 518.0]])
    assert np.allclose(corners, [[0.0, 0.0], [240.0, 400.0]])


def test_point_mapping_round_trips():
    transform = FrameTransform("x.jpg", (400, 300), (1.295, 1.3066), (-3.0, 105.0))
    points = np.random.default_rng(0).uniform(0, 400, size=(4, 5, 2))
    assert np.allclose(transform.processed_to_original(transform.original_to_processed(points)), points)
    with pytest.raises(ValueError):
        transform.processed_to_original(np.zeros((4, 3)))


def test_intrinsics_to_original_projects_consistently():
    transform = FrameTransform("x.jpg", (640, 480), (518 / 640, 392 / 480), (0.0, 63.0))
    processed_k = np.array([[400.0, 0.0, 259.0], [0.0, 410.0, 259.0], [0.0, 0.0, 1.0]])
    original_k = transform.intrinsics_to_original(processed_k)
    expected_k = np.array(
        [
            [400.0 / transform.scale[0], 0.0, 259.0 / transform.scale[0]],
            [0.0, 410.0 / transform.scale[1], (259.0 - 63.0) / transform.scale[1]],
            [0.0, 0.0, 1.0],
        ]
    )
    assert np.allclose(original_k, expected_k)

    # A 3-D point projected with the processed intrinsics, mapped back to the photo, must equal
    # its projection with the photo's intrinsics.
    point = np.array([0.3, -0.2, 2.0])
    in_processed = (processed_k @ point)[:2] / point[2]
    in_original = (original_k @ point)[:2] / point[2]
    assert np.allclose(transform.processed_to_original(in_processed), in_original)

    batched = transform.intrinsics_to_original(np.stack([processed_k] * 3))
    assert batched.shape == (3, 3, 3) and np.allclose(batched[2], original_k)
    assert np.allclose(transform.intrinsics_to_processed(original_k), processed_k)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def expect_input_error(call, *fragments: str) -> None:
    with pytest.raises(InputError) as caught:
        call()
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_missing_file(tmp_path):
    expect_input_error(lambda: load_images([tmp_path / "nowhere.jpg"]), "nowhere.jpg", "not found")


def test_text_file_with_image_extension(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture")
    expect_input_error(lambda: load_images([path]), "notes.jpg")


def test_truncated_image(tmp_path, photos):
    data = photos["landscape"].read_bytes()
    path = tmp_path / "broken.png"
    path.write_bytes(data[: len(data) // 2])
    expect_input_error(lambda: load_images([path]), "broken.png")


def test_folder_given_as_image(tmp_path):
    expect_input_error(lambda: load_images([tmp_path]), tmp_path.name, "folder")


def test_empty_input():
    expect_input_error(lambda: load_images([]), "No images")


def test_too_thin_image(tmp_path):
    path = noise_image(tmp_path / "sliver.png", 1200, 14)
    expect_input_error(lambda: load_images([path], mode="crop"), "sliver.png", "too small or too thin")
    pole = noise_image(tmp_path / "pole.png", 14, 1200)
    expect_input_error(lambda: load_images([pole], mode="pad"), "pole.png", "too small or too thin")


def test_very_tall_image_rejected_in_crop_mode_only(tmp_path):
    # 40:1 would be resized to 518 x 20720 before cropping; pad mode handles it in 518 x 14.
    needle = noise_image(tmp_path / "needle.png", 14, 560)
    expect_input_error(lambda: load_images([needle], mode="crop"), "needle.png", "pad mode")
    assert load_images([needle], mode="pad").shape == (1, 3, 518, 518)
    # Merely tall images (here 4:1) are cropped as usual.
    assert load_images([noise_image(tmp_path / "tall.png", 14, 56)], mode="crop").shape == (1, 3, 518, 518)


def test_error_names_the_failing_file_in_a_batch(tmp_path, photos):
    bad = tmp_path / "second.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    expect_input_error(lambda: load_images([photos["square"], bad]), "second.png")


def test_unsupported_input_type():
    expect_input_error(lambda: load_images([42]), "image_000", "unsupported")


# ----------------------------------------------------------------------------------------------
# Listing a folder
# ----------------------------------------------------------------------------------------------


def test_list_image_files_natural_order(tmp_path):
    for name in ["frame10.png", "frame2.png", "frame1.jpg", "FRAME3.PNG", ".hidden.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "frame4.png").mkdir()
    listed = list_image_files(tmp_path)
    assert [path.name for path in listed] == ["frame1.jpg", "frame2.png", "FRAME3.PNG", "frame10.png"]
    assert all(isinstance(path, Path) for path in listed)


def test_list_image_files_missing_folder(tmp_path):
    expect_input_error(lambda: list_image_files(tmp_path / "absent"), "absent")


def test_image_extensions_cover_common_formats():
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"} <= IMAGE_EXTENSIONS
