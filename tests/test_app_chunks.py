""""Process in chunks" in the app: the button follows the memory line, and a chunked run through
the API (gradio_client) is one stored scene of all frames, with a share link that opens, one
progress stage per chunk, and the downloads of any other scene.

The server runs in this process, so a test makes the frames "not fit" by shrinking the memory the
device reports (``vggt_core.pipeline.available_memory_bytes``, which both the memory line and the
model's guard read), exactly as the memory-line tests do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file

import vggt_app.share_links
import vggt_core.pipeline as pipeline
from app_fixtures import predict_with_updates, running_app, write_room_photos  # noqa: F401 (fixture)
from vggt_app.panels.memory import MemoryPanel
from vggt_app.store.entries import ReconstructionStore, is_valid_reconstruction_id
from vggt_core import RANDOM_TINY_CHECKPOINT
from vggt_core.config import tiny_config
from vggt_core.memory import parameter_count
from vggt_core.pipeline import estimate_memory

VIEW = [50, "depth", "All", True, False, False, vggt_app.share_links.DEFAULT_MAX_POINTS]
# Small photos: the model input is 518 wide whatever the photo, so only decoding gets cheaper.
WIDTH, HEIGHT = 112, 84
MODEL_INPUT_HW = (392, 518)  # 112×84 scaled to 518 wide: 388.5 rounds to 392 (a multiple of 14)


@pytest.fixture(scope="module")
def four_photos(tmp_path_factory) -> list[Path]:
    return write_room_photos(tmp_path_factory.mktemp("chunk-photos"), 4, WIDTH, HEIGHT, seed=3, prefix="frame")


@pytest.fixture
def room_for_two_frames(monkeypatch):
    """The device reports just enough memory for two frames (the memory line's estimate)."""
    config = tiny_config()
    two = estimate_memory(config, 2, *MODEL_INPUT_HW, torch.device("cpu"), num_parameters=parameter_count(config))
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda device: two.needed_bytes + 1)


def memory_panel(frame_limit: int = 6) -> MemoryPanel:
    return MemoryPanel(frame_limit, checkpoint=RANDOM_TINY_CHECKPOINT, device="cpu", on_zero_gpu=False,
                       file_paths=lambda files: [str(path) for path in files], user_errors=lambda handler: handler)


def test_the_chunks_button_shows_only_when_the_memory_line_says_the_frames_do_not_fit(four_photos, monkeypatch):
    line, _, _, chunks_button = memory_panel().status(four_photos, 1.0)
    assert "Will not fit" not in line and chunks_button.visible is False

    config = tiny_config()
    two = estimate_memory(config, 2, *MODEL_INPUT_HW, torch.device("cpu"), num_parameters=parameter_count(config))
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda device: two.needed_bytes + 1)
    line, _, _, chunks_button = memory_panel().status(four_photos, 1.0)
    assert "**Will not fit**: about 2 frames would" in line
    assert chunks_button.visible is True and chunks_button.value == "Process in chunks of 2 frames"

    # Chunks do not lift the frame limit: over it, only thinning is offered.
    _, thin_button, _, chunks_button = memory_panel(frame_limit=3).status(four_photos, 1.0)
    assert thin_button.visible is True and chunks_button.visible is False

    # Not even two frames fit: a chunk needs two, so chunks cannot help.
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda device: 1)
    line, _, _, chunks_button = memory_panel().status(four_photos, 1.0)
    assert "Will not fit" in line and chunks_button.visible is False


def test_a_chunked_run_is_one_stored_scene_with_a_share_link_that_opens(running_app, four_photos,  # noqa: F811
                                                                        room_for_two_frames):
    client = Client(running_app.url, verbose=False)
    files = [handle_file(str(path)) for path in four_photos]
    line, target = client.predict(files, 1.0, api_name="/memory_preview")
    assert "**Will not fit**: about 2 frames would" in line and target == 2
    # Reconstruct refuses them, as before ...
    with pytest.raises(Exception, match="do not fit in the memory"):
        client.predict(files, 1.0, *VIEW, api_name="/reconstruct")

    # ... while chunks of the size the button offers (0: as many as fit) run: 2 frames each,
    # overlapping by 1, so the 4 frames make 3 chunks.
    run = predict_with_updates(client, files, 1.0, 0, *VIEW, api_name="/reconstruct_in_chunks")
    outputs, progress = run.outputs, run.progress
    glb, summary, depth_gallery, _, recon_id, share, downloads = outputs[:7]
    assert "**4 frames**" in summary and "in chunks of 2 frames (overlap 1)" in summary
    assert Path(glb).is_file() and len(depth_gallery) == 4 * 4 and downloads is None  # input, depth, confidence, normals of 4 frames
    chunk_stages = [message for message in progress if message.startswith("Chunk ")]
    for number in (1, 2, 3):
        assert any(message.startswith(f"Chunk {number} of 3") for message in chunk_stages), progress

    # One stored entry of all frames, aligned from the chunks.
    assert is_valid_reconstruction_id(recon_id)
    stored = ReconstructionStore(running_app.settings.storage_dir, ttl_seconds=3600, max_bytes=10**9).load(recon_id)
    recon = stored.reconstruction
    assert recon.num_frames == 4 and list(recon.frame_names) == [path.name for path in four_photos]
    assert recon.info["chunk_alignment"]["chunk_size"] == 2
    assert np.isfinite(recon.depth).all() and np.isfinite(recon.extrinsics).all()
    assert stored.metadata["chunks"] == {"size": 2, "overlap": 1}

    # Its share link opens the same scene, and its downloads are those of any scene.
    link = share["value"]
    assert link == f"{running_app.url.rstrip('/')}/?r={recon_id}"
    opened = Client(running_app.url, verbose=False).predict(link, *VIEW, api_name="/open_shared")
    assert opened[4] == recon_id and "**4 frames**" in opened[1]
    files_out = client.predict(recon_id, *VIEW, api_name="/export", formats=["npz"])
    assert [Path(path).suffix for path in files_out] == [".npz"]


def test_a_chunk_size_from_the_api_is_used_and_a_bad_one_refused(running_app, four_photos):  # noqa: F811
    client = Client(running_app.url, verbose=False)
    files = [handle_file(str(path)) for path in four_photos]
    summary = client.predict(files, 1.0, 3, *VIEW, api_name="/reconstruct_in_chunks")[1]
    assert "**4 frames**" in summary and "in chunks of 3 frames (overlap 1)" in summary
    with pytest.raises(Exception, match="at least 2 frames"):
        client.predict(files, 1.0, 1, *VIEW, api_name="/reconstruct_in_chunks")
