"""`arrival predict`: records from a CSV or JSON file, sent to the serving API."""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
from typing import Any

from cli.operations import OperationError


def read_records(text: str, is_csv: bool) -> list[dict[str, Any]]:
    """Records from CSV (a header, then rows; empty cells are missing) or JSON (one record, a list of
    them, or {"records": [...]}). Numbers in CSV are sent as numbers; the API checks the rest."""
    if is_csv:
        return [
            {name: _csv_value(value) for name, value in row.items()}
            for row in csv.DictReader(io.StringIO(text))
        ]
    document = json.loads(text)
    if isinstance(document, dict) and "records" in document:
        document = document["records"]
    return document if isinstance(document, list) else [document]


def _csv_value(value: str | None) -> Any:
    if value is None or value.strip() in {"", "NA"}:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def predict(api_url: str, api_key: str, model: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """POST the records to the serving API; a 4xx comes back as an OperationError naming the field."""
    body = json.dumps(records[0] if len(records) == 1 else {"records": records}).encode()
    request = urllib.request.Request(  # noqa: S310  # the URL is the operator's own API
        f"{api_url.rstrip('/')}/models/{model}/predict",
        data=body,
        headers={"Content-Type": "application/json", "x-api-key": api_key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise OperationError(
            f"the API refused the request ({error.code}): {error.read().decode()}"
        ) from error
    except urllib.error.URLError as error:
        raise OperationError(f"cannot reach the serving API at {api_url}: {error.reason}") from error
    return answer
