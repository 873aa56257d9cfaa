"""Per-client rate limits through the real app (issue #19): the message reaches the page, and
another client (another forwarded address, believed with --trust-forwarded-for) is unaffected."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import vggt_app.share_links
from app_fixtures import launch_test_app, synthetic_photos  # noqa: F401 (fixtures)

VIEW = [50, "depth", "All", True, False, False, vggt_app.share_links.DEFAULT_MAX_POINTS, False]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = launch_test_app(tmp_path_factory.mktemp("public-storage"), trust_forwarded_for=True,
                              client_runs_per_hour=1, client_derived_per_hour=1)
    try:
        yield running
    finally:
        running.demo.close()


def client_at(server, address: str) -> Client:
    return Client(server.url, verbose=False, headers={"X-Forwarded-For": address})


def test_rate_limits_answer_with_a_message_and_spare_other_clients(server, synthetic_photos):  # noqa: F811
    photos = [handle_file(str(path)) for path in synthetic_photos[:2]]
    busy, other = client_at(server, "198.51.100.9"), client_at(server, "203.0.113.7")
    first = busy.predict(photos, 1.0, *VIEW, api_name="/reconstruct")
    with pytest.raises(AppError, match=r"1 reconstructions in the last 60 minutes.*try again in \d+ s"):
        busy.predict(photos, 1.0, *VIEW, api_name="/reconstruct")
    others = other.predict(photos, 1.0, *VIEW, api_name="/reconstruct")
    assert others[4] != first[4]

    busy.predict(first[4], "manual", 300, "px", *VIEW, api_name="/apply_camera")
    with pytest.raises(AppError, match=r"try again in \d+ s"):
        busy.predict(first[4], "manual", 400, "px", *VIEW, api_name="/apply_camera")
    other.predict(first[4], "manual", 400, "px", *VIEW, api_name="/apply_camera")  # its own limit

    # Two reconstructions and two derived scenes, with salted client keys, never the addresses.
    metadata = [path.read_text() for path in server.settings.storage_dir.glob("*/metadata.json")]
    assert len(metadata) == 4 and not any("198.51.100.9" in text or "203.0.113.7" in text for text in metadata)
