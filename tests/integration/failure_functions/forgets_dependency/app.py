from typing import Any

import requests  # not in this function's requirements.txt: must fail as on AWS


def handler(event: dict[str, Any], context: Any) -> str:
    return requests.__version__  # type: ignore[attr-defined]  # requests re-exports it implicitly
