"""gather_input_frames / reconstruct_frames: the path from user files to a Reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vggt_core.config import tiny_config
from vggt_core.errors import FrameLimitError, InputError
from vggt_core.model import VGGT
from vggt_core.pipeline import gather_input_frames, reconstruct_frames
from vggt_core.synthetic import render_scene, save_scene_images


@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene")
    save_scene_images(render_scene("table", num_views=4, width=112, height=84), folder)
    return folder


def write_video(path, frames: int = 30, fps: int = 10):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(frames):
            image = np.full((48, 64, 3), index * 8 % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_folder_gives_sorted_named_frames(scene_folder):
    frames = gather_input_frames([scene_folder])
    assert [f.name for f in frames] == ["000.png", "001.png", "002.png", "003.png"]


def test_photos_over_the_limit_are_refused_not_dropped(scene_folder):
    with pytest.raises(FrameLimitError, match="4 photos were given, but at most 3"):
        gather_input_frames([scene_folder], max_frames=3)


def test_video_is_sampled_and_thinned_to_the_frames_left(tmp_path, scene_folder):
    video = tmp_path / "clip.mp4"
    write_video(video, frames=30, fps=10)  # 3 s
    frames = gather_input_frames([video], fps=5.0)
    assert len(frames) == 15 and frames[0].name == "clip_0000"
    mixed = gather_input_frames([scene_folder / "000.png", video], fps=5.0, max_frames=6)
    assert len(mixed) == 6 and mixed[0].name == "000.png"


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="No input"):
        gather_input_frames([])
    with pytest.raises(InputError, match="nope.png: no such file"):
        gather_input_frames([tmp_path / "nope.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        gather_input_frames([tmp_path / "empty"])


def test_unreadable_photo_fails_in_preprocessing_naming_the_file(tmp_path, scene_folder):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    frames = gather_input_frames([scene_folder / "000.png", bad])
    torch.manual_seed(0)
    with pytest.raises(InputError, match="broken.jpg"):
        reconstruct_frames(VGGT(tiny_config()).eval(), frames)


def test_reconstruct_frames_records_names_sizes_and_progress(scene_folder):
    torch.manual_seed(0)
    model = VGGT(tiny_config()).eval()
    seen = []
    recon = reconstruct_frames(model, gather_input_frames([scene_folder]), mode="pad",
                               progress=lambda fraction, message: seen.append(fraction))
    assert recon.num_frames == 4 and recon.image_size_hw == (518, 518)
    assert recon.frame_names == ["000.png", "001.png", "002.png", "003.png"]
    assert recon.original_sizes.tolist() == [[112, 84]] * 4
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    assert np.isfinite(recon.points_from_depth).all()


def test_frames_that_do_not_fit_in_memory_are_refused_before_running(scene_folder, monkeypatch):
    import vggt_core.pipeline as pipeline

    torch.manual_seed(0)
    model = VGGT(tiny_config()).eval()
    frames = gather_input_frames([scene_folder])
    ran = []
    monkeypatch.setattr(pipeline, "reconstruct", lambda *args, **kwargs: ran.append(1))
    # The tiny model needs about 190 MB for these 4 frames at 518x392 in float32.
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda device: 100 * 2 ** 20)
    with pytest.raises(FrameLimitError, match=r"4 frames at 518x392 do not fit in the memory .*About [12] frames"):
        reconstruct_frames(model, frames)
    assert ran == []


def test_the_fitting_frame_count_in_the_message_does_fit(scene_folder, monkeypatch):
    import re

    import vggt_core.pipeline as pipeline
    from vggt_core.memory import estimate_peak_memory_bytes

    torch.manual_seed(0)
    model = VGGT(tiny_config()).eval()
    frames = gather_input_frames([scene_folder])
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    free = 300 * 2 ** 20
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda device: free)
    with pytest.raises(FrameLimitError) as raised:
        reconstruct_frames(model, frames * 64)
    fitting = int(re.search(r"About (\d+) frames would fit", str(raised.value)).group(1))
    height, width = 392, 518
    assert 4 <= fitting < 256
    assert estimate_peak_memory_bytes(model.config, fitting, height, width, activation_bytes=4) <= free + weights
    assert estimate_peak_memory_bytes(model.config, fitting + 1, height, width, activation_bytes=4) > free + weights


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
])
def test_running_out_of_memory_becomes_a_frame_limit_message(scene_folder, monkeypatch, error):
    import vggt_core.pipeline as pipeline

    torch.manual_seed(0)
    model = VGGT(tiny_config()).eval()

    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(pipeline, "reconstruct", out_of_memory)
    with pytest.raises(FrameLimitError, match=r"4 frames at .* do not fit .*About \d+ frames would fit") as raised:
        reconstruct_frames(model, gather_input_frames([scene_folder]))
    assert raised.value.__cause__ is error


def test_out_of_memory_without_a_free_memory_figure_gives_no_made_up_count(scene_folder, monkeypatch):
    import vggt_core.pipeline as pipeline

    torch.manual_seed(0)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)")

    monkeypatch.setattr(pipeline, "reconstruct", out_of_memory)
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda device: None)  # as on MPS
    with pytest.raises(FrameLimitError, match=r"4 frames at 518x392 do not fit in the memory: use fewer") as raised:
        reconstruct_frames(VGGT(tiny_config()).eval(), gather_input_frames([scene_folder]))
    assert "would fit" not in str(raised.value)


def test_other_runtime_errors_are_not_mistaken_for_memory(scene_folder, monkeypatch):
    import vggt_core.pipeline as pipeline

    torch.manual_seed(0)

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(pipeline, "reconstruct", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        reconstruct_frames(VGGT(tiny_config()).eval(), gather_input_frames([scene_folder]))


def test_available_memory_is_known_on_a_linux_cpu():
    from pathlib import Path

    from vggt_core.pipeline import available_memory_bytes

    if not Path("/proc/meminfo").exists():
        pytest.skip("no /proc/meminfo")
    assert available_memory_bytes(torch.device("cpu")) > 2 ** 20
    assert available_memory_bytes(torch.device("meta")) is None
