"""/docs: Swagger UI, with its script and stylesheet served by the app itself from the fastapi-offline
package, never from a CDN: the page works on a laptop with no network, and in a VPC without egress.

Every address the page uses is relative to the page, `<prefix>/docs`: its assets
(`<prefix>/docs/swagger-ui.css`), its document (`<prefix>/openapi.json`), and, through the document's
relative server (serving/openapi.py), the requests "Try it out" sends (`<prefix>/models/...`). So it
works at the server's root as behind API Gateway's stage (`/Prod`) or LocalStack's longer prefix.
"""

from __future__ import annotations

import base64
from functools import cache
from importlib.resources import files

from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

# The package's whole content is these files: its own code only wires them into a FastAPI app of its
# making, which would not carry this app's API key check.
_ASSETS = files("fastapi_offline") / "static"
MEDIA_TYPES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}


@cache
def asset(name: str) -> bytes:
    """One of MEDIA_TYPES' files, read once."""
    return (_ASSETS / name).read_bytes()


@cache
def _favicon() -> str:
    # Inline: a PNG through API Gateway would need the API to declare binary media types.
    return "data:image/png;base64," + base64.b64encode((_ASSETS / "favicon.png").read_bytes()).decode()


def swagger_page(title: str) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="openapi.json",
        title=title,
        swagger_js_url="docs/swagger-ui-bundle.js",
        swagger_css_url="docs/swagger-ui.css",
        swagger_favicon_url=_favicon(),
    )
