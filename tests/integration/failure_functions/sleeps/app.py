import time
from typing import Any


def handler(event: dict[str, Any], context: Any) -> None:
    print("sleeping past my timeout")
    time.sleep(60)
