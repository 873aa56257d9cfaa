"""Tests for vggt_core.video: frame sampling, rotation and errors, on videos made with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import vggt_core.video as video_module
from vggt_core.errors import InputError
from vggt_core.video import (
    VIDEO_EXTENSIONS,
    choose_frame_indices,
    extract_frames,
    probe_video,
    rotate_upright,
    rotation_from_display_matrix,
    sample_at_rate,
    thin_evenly,
    upright_size,
)

# Frame numbers are written as 5 black/white vertical stripes (bit b = stripe b), which
# survives lossy compression, unlike a grey level.
STRIPE_WIDTH = 16
STRIPE_COUNT = 5
FRAME_WIDTH = STRIPE_WIDTH * STRIPE_COUNT
FRAME_HEIGHT = 32


def frame_with_number(number: int) -> np.ndarray:
    """RGB uint8 [FRAME_HEIGHT, FRAME_WIDTH, 3] whose stripes spell ``number`` in binary."""
    pixels = np.zeros((FRAME_HEIGHT, FRAME_WIDTH, 3), np.uint8)
    for bit in range(STRIPE_COUNT):
        if number >> bit & 1:
            pixels[:, bit * STRIPE_WIDTH : (bit + 1) * STRIPE_WIDTH] = 255
    return pixels


def number_in_frame(image: Image.Image) -> int:
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.shape == (FRAME_HEIGHT, FRAME_WIDTH)
    number = 0
    for bit in range(STRIPE_COUNT):
        # The stripe's middle avoids the blur at stripe edges.
        stripe = pixels[4:-4, bit * STRIPE_WIDTH + 4 : (bit + 1) * STRIPE_WIDTH - 4]
        if stripe.mean() > 128:
            number |= 1 << bit
    return number


def write_video(path: Path, frames: list[np.ndarray], rate: int = 10, rotation: int | None = None) -> Path:
    """Encode RGB frames [H, W, 3] as MPEG-4 Part 2 at ``rate`` fps, optionally with a display rotation."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate, options={"qscale": "2"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def numbered_video(tmp_path_factory) -> Path:
    """3 s at 10 fps; frame i shows the number i."""
    path = tmp_path_factory.mktemp("video") / "numbered.mp4"
    return write_video(path, [frame_with_number(i) for i in range(30)])


def picked_numbers(frames: list[Image.Image]) -> list[int]:
    return [number_in_frame(frame) for frame in frames]


# ----------------------------------------------------------------------------------------------
# Pure selection logic
# ----------------------------------------------------------------------------------------------


def test_sample_at_rate_takes_first_frame_at_or_after_each_instant():
    times = [i / 10 for i in range(30)]
    assert sample_at_rate(times, 1.0) == [0, 10, 20]
    assert sample_at_rate(times, 3.0) == [0, 4, 7, 10, 14, 17, 20, 24, 27]


def test_sample_at_rate_uses_a_frame_after_a_gap_once():
    # The frame at 2.5 s is the first one at or after both 1 s and 2 s.
    assert sample_at_rate([0.0, 0.1, 2.5, 2.6, 3.0], 1.0) == [0, 2, 4]


def test_sample_at_rate_tolerates_timestamp_rounding():
    assert sample_at_rate([0.0, 0.5, 0.9999999, 1.5], 1.0) == [0, 2]


def test_sample_at_rate_keeps_everything_at_or_above_video_rate():
    times = [0.0, 0.04, 0.1, 0.13]
    assert sample_at_rate(times, 25.0, video_fps=25.0) == [0, 1, 2, 3]


def test_thin_evenly_keeps_rounded_linspace_positions():
    assert thin_evenly(30, 4) == [0, 10, 19, 29]
    assert thin_evenly(6, 4) == [0, 2, 3, 5]
    assert thin_evenly(3, 10) == [0, 1, 2]
    assert thin_evenly(5, None) == [0, 1, 2, 3, 4]


def test_choose_frame_indices_samples_then_thins():
    times = [i / 10 for i in range(30)]
    assert choose_frame_indices(times, 2.0, max_frames=4) == [0, 10, 15, 25]


# ----------------------------------------------------------------------------------------------
# Extraction from real files
# ----------------------------------------------------------------------------------------------


def test_extract_one_frame_per_second(numbered_video):
    frames = extract_frames(numbered_video, fps=1.0)
    assert picked_numbers(frames) == [0, 10, 20]
    assert all(frame.mode == "RGB" and frame.size == (FRAME_WIDTH, FRAME_HEIGHT) for frame in frames)


def test_extract_fractional_rate(numbered_video):
    assert picked_numbers(extract_frames(numbered_video, fps=3.0)) == [0, 4, 7, 10, 14, 17, 20, 24, 27]


def test_extract_at_or_above_video_rate_gives_every_frame(numbered_video):
    assert picked_numbers(extract_frames(numbered_video, fps=10.0)) == list(range(30))
    assert picked_numbers(extract_frames(numbered_video, fps=60.0)) == list(range(30))


def test_extract_thins_to_max_frames(numbered_video):
    assert picked_numbers(extract_frames(numbered_video, fps=30.0, max_frames=4)) == [0, 10, 19, 29]
    assert picked_numbers(extract_frames(numbered_video, fps=2.0, max_frames=4)) == [0, 10, 15, 25]


def test_extract_slow_rate_keeps_first_frame(numbered_video):
    assert picked_numbers(extract_frames(numbered_video, fps=0.25)) == [0]


def test_probe_reports_stream_properties(numbered_video):
    info = probe_video(numbered_video)
    assert info.fps == pytest.approx(10.0)
    assert info.frame_count == 30
    assert info.duration_s == pytest.approx(3.0, abs=0.11)
    assert (info.width, info.height, info.rotation) == (FRAME_WIDTH, FRAME_HEIGHT, 0)


# ----------------------------------------------------------------------------------------------
# Rotation
# ----------------------------------------------------------------------------------------------


def left_half_white_frame() -> np.ndarray:
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:, :32] = 255
    return pixels


needs_display_rotation = pytest.mark.skipif(
    not hasattr(av.video.stream.VideoStream, "set_display_rotation"),
    reason="this PyAV cannot write display matrices",
)


@needs_display_rotation
@pytest.mark.parametrize(
    ("rotation", "white_side"),
    [(90, "bottom"), (-90, "top"), (180, "right")],
)
def test_rotated_video_comes_out_upright(tmp_path, rotation, white_side):
    path = write_video(tmp_path / "rotated.mp4", [left_half_white_frame()] * 5, rotation=rotation)
    frames = extract_frames(path, fps=100.0)
    assert len(frames) == 5
    expected_size = (64, 48) if rotation == 180 else (48, 64)
    assert frames[0].size == expected_size
    pixels = np.asarray(frames[0].convert("L"), dtype=np.float64)
    height, width = pixels.shape
    halves = {
        "top": (pixels[: height // 2 - 2], pixels[height // 2 + 2 :]),
        "bottom": (pixels[height // 2 + 2 :], pixels[: height // 2 - 2]),
        "right": (pixels[:, width // 2 + 2 :], pixels[:, : width // 2 - 2]),
    }
    bright, dark = halves[white_side]
    assert bright.mean() > 240 and dark.mean() < 15

    info = probe_video(path)
    assert info.rotation == rotation
    assert (info.width, info.height) == expected_size


def test_rotate_upright_turns_counter_clockwise():
    # 2x1 image: red on the left, blue on the right.
    image = Image.new("RGB", (2, 1))
    image.putpixel((0, 0), (255, 0, 0))
    image.putpixel((1, 0), (0, 0, 255))
    turned = rotate_upright(image, 90)
    assert turned.size == (1, 2)
    # Counter-clockwise: the right end moves to the top.
    assert turned.getpixel((0, 0)) == (0, 0, 255)
    assert rotate_upright(image, -90).getpixel((0, 0)) == (255, 0, 0)
    assert rotate_upright(image, 0) is image
    assert rotate_upright(image, 360).size == (2, 1)


def test_upright_size():
    assert upright_size(64, 48, 90) == (48, 64)
    assert upright_size(64, 48, -270) == (48, 64)
    assert upright_size(64, 48, 180) == (64, 48)


def test_rotation_from_display_matrix():
    one = 1 << 16
    identity = (one, 0, 0, 0, one, 0, 0, 0, 1 << 30)
    # The matrix PyAV writes for set_display_rotation(90), and which it reads back as 90.
    quarter_turn = (0, -one, 0, one, 0, 0, 0, 0, 1 << 30)
    assert rotation_from_display_matrix(identity) == pytest.approx(0.0)
    assert rotation_from_display_matrix(quarter_turn) == pytest.approx(90.0)
    assert rotation_from_display_matrix((0, one, 0, -one, 0, 0, 0, 0, 1 << 30)) == pytest.approx(-90.0)
    assert abs(rotation_from_display_matrix((-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30))) == pytest.approx(180.0)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def assert_input_error_naming(path: Path, call, match: str | None = None):
    with pytest.raises(InputError) as caught:
        call()
    assert path.name in str(caught.value)
    if match is not None:
        assert match in str(caught.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.mp4"
    assert_input_error_naming(path, lambda: extract_frames(path), "not found")
    assert_input_error_naming(path, lambda: probe_video(path), "not found")


def test_text_file_renamed_as_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    assert_input_error_naming(path, lambda: extract_frames(path), "not a readable video")
    assert_input_error_naming(path, lambda: probe_video(path))


def test_truncated_video(tmp_path, numbered_video):
    path = tmp_path / "cut.mp4"
    data = numbered_video.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_input_error_naming(path, lambda: extract_frames(path))


def test_stream_without_frames(tmp_path):
    path = tmp_path / "empty.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1  # the case under test: a stream, no frames
    assert_input_error_naming(path, lambda: extract_frames(path), "no decodable frames")
    assert_input_error_naming(path, lambda: probe_video(path), "no decodable frames")


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert_input_error_naming(path, lambda: extract_frames(path), "no video stream")


@pytest.mark.parametrize("fps", [0, -1.0, float("nan")])
def test_non_positive_fps(numbered_video, fps):
    assert_input_error_naming(numbered_video, lambda: extract_frames(numbered_video, fps=fps), "per second")


@pytest.mark.parametrize("max_frames", [0, -3, 2.5, "7"])
def test_bad_max_frames(numbered_video, max_frames):
    call = lambda: extract_frames(numbered_video, max_frames=max_frames)  # noqa: E731
    assert_input_error_naming(numbered_video, call, "max_frames")


def test_numpy_numbers_are_accepted(numbered_video):
    frames = extract_frames(numbered_video, fps=np.float32(1.0), max_frames=np.int64(2))
    assert picked_numbers(frames) == [0, 20]


def test_common_extensions_listed():
    assert {".mp4", ".mov", ".avi", ".mkv", ".webm"} <= VIDEO_EXTENSIONS


@needs_display_rotation
def test_display_matrix_formula_agrees_with_pyav(tmp_path):
    path = write_video(tmp_path / "turned.mp4", [left_half_white_frame()], rotation=-90)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        matrices = [side_data for side_data in frame.side_data if "DISPLAYMATRIX" in str(side_data.type)]
        assert matrices, "expected a display matrix on the decoded frame"
        values = np.frombuffer(bytes(matrices[0]), dtype="<i4")[:9]
        assert rotation_from_display_matrix(values) == pytest.approx(frame.rotation)
        assert frame.rotation == -90


# ----------------------------------------------------------------------------------------------
# Decoding strategy
# ----------------------------------------------------------------------------------------------


def test_decoding_stops_after_last_chosen_frame(numbered_video, monkeypatch):
    decoded_counts = []
    original = video_module._decoded_frames

    def counting_decoded_frames(container, stream, path):
        decoded_counts.append(0)
        for frame in original(container, stream, path):
            decoded_counts[-1] += 1
            yield frame

    monkeypatch.setattr(video_module, "_decoded_frames", counting_decoded_frames)
    assert picked_numbers(extract_frames(numbered_video, fps=1.0)) == [0, 10, 20]
    # Only the picking pass decodes, and it stops at frame 20 of 30.
    assert decoded_counts == [21]


def test_falls_back_to_decoded_timestamps_without_packet_timestamps(numbered_video, monkeypatch):
    monkeypatch.setattr(video_module, "_timeline_from_packets", lambda path: None)
    assert picked_numbers(extract_frames(numbered_video, fps=1.0)) == [0, 10, 20]
    assert picked_numbers(extract_frames(numbered_video, fps=30.0, max_frames=4)) == [0, 10, 19, 29]


def test_falls_back_when_packet_timestamps_do_not_match_frames(numbered_video, monkeypatch):
    bogus = video_module._Timeline(
        times_s=[i / 10 for i in range(30)],
        keys=[10_000_000 + i for i in range(30)],
        keys_are_pts=True,
        video_fps=10.0,
    )
    monkeypatch.setattr(video_module, "_timeline_from_packets", lambda path: bogus)
    assert picked_numbers(extract_frames(numbered_video, fps=2.0)) == [0, 5, 10, 15, 20, 25]
