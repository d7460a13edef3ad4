"""/docs with no network: Swagger UI's assets come from the server itself, and every address the page
and its document use is relative, so the page works at the server's root as under API Gateway's stage."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import ServingSettings
from serving.store import ModelStore
from tests import serving_bundles
from tests.serving_bundles import MODELS_BUCKET, publish

# How API Gateway's stage and LocalStack's own prefix put the app under a path.
PREFIXES = [
    "https://abc123.execute-api.eu-west-1.amazonaws.com/Prod",
    "http://127.0.0.1:4566/_aws/execute-api/abc123/Prod",
    "http://127.0.0.1:8080",
]


class _Addresses(HTMLParser):
    """Every address an HTML page loads by itself: scripts, stylesheets, icons."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        address = named.get("src") if tag == "script" else named.get("href") if tag == "link" else None
        if address:
            self.found.append(address)


@pytest.fixture
def client(aws_credentials: None) -> Iterator[TestClient]:
    with serving_bundles.models_bucket() as s3:
        publish(s3, serving_bundles.trained("iris", "iris"), "1")
        store = ModelStore(MODELS_BUCKET, max_batch=10)
        app = create_app(ServingSettings(models_bucket=MODELS_BUCKET), store=store, api_key=None)
        store.refresh()
        yield TestClient(app)


def test_the_page_loads_swagger_ui_from_the_server_not_a_cdn(client: TestClient) -> None:
    page = client.get("/docs")
    parser = _Addresses()
    parser.feed(page.text)

    # THEN the page loads a script and a stylesheet, and names no other host
    assert len(parser.found) == 3, parser.found  # the stylesheet, the icon, the script
    assert all(
        not re.match(r"[a-z]+://", address) and not address.startswith("//") for address in parser.found
    )
    assert "cdn" not in page.text
    # AND each is served, relative to the page, with its type
    types = {}
    for address in parser.found:
        if address.startswith("data:"):
            continue
        asset = client.get(urljoin(str(page.url), address))
        assert asset.status_code == 200 and len(asset.content) > 100_000, address
        types[address.rsplit(".", 1)[1]] = asset.headers["content-type"]
    assert types == {"css": "text/css; charset=utf-8", "js": "text/javascript; charset=utf-8"}
    assert client.get("/docs/../serving/app.py").status_code == 404
    assert client.get("/docs/favicon.png").status_code == 404


@pytest.mark.parametrize("prefix", PREFIXES)
def test_try_it_out_calls_the_paths_under_the_pages_own_prefix(client: TestClient, prefix: str) -> None:
    page = f"{prefix}/docs"
    named = re.search(r"url: '([^']+)'", client.get("/docs").text)
    assert named
    document_url = urljoin(page, named.group(1))
    assert document_url == f"{prefix}/openapi.json"

    document = client.get("/openapi.json").json()
    (server,) = document["servers"]
    # Swagger UI resolves a relative server against the document's address, less a trailing slash,
    # then appends the operation's path.
    base = urljoin(document_url, server["url"]).rstrip("/")
    assert f"{base}/models/iris/predict" == f"{prefix}/models/iris/predict"
    assert "/models/iris/predict" in document["paths"]
