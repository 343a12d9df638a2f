"""``GET /``: a page linking the demo pages when they are served, else a JSON pointer."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from tests.support.servers import ServerProcess, http_json


@pytest.fixture
def server_without_pages(
    redis_server: RedisProcess, keys: Keys, tmp_path: Path
) -> Iterator[ServerProcess]:
    process = ServerProcess(redis_server.url, keys.prefix, tmp_path, GIFTWIRE_DEMO_PAGES="false")
    try:
        process.start()
        yield process
    finally:
        process.stop()


def test_home_page_links_the_demo_pages(server: ServerProcess) -> None:
    with urllib.request.urlopen(server.http + "/", timeout=5) as response:
        assert response.headers["content-type"].startswith("text/html")
        page = response.read().decode()
    for link in ("/demo/viewer.html", "/demo/creator.html", "/demo/overlay.html"):
        assert f'href="{link}' in page
        with urllib.request.urlopen(server.http + link, timeout=5) as linked:
            assert linked.status == 200


def test_without_demo_pages_home_points_to_the_docs(server_without_pages: ServerProcess) -> None:
    status, body = http_json("GET", server_without_pages.http + "/")
    assert status == 200
    assert body["service"] == "giftwire" and "protocol.md" in body["docs"]
    status, _ = http_json("GET", server_without_pages.http + "/demo/viewer.html")
    assert status == 404
