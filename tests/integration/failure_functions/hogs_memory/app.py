from typing import Any


def handler(event: dict[str, Any], context: Any) -> int:
    print("allocating far more than my MemorySize")
    hog = bytearray(600 * 1024 * 1024)
    hog[::4096] = b"x" * len(hog[::4096])  # touch every page, so it is really resident
    return len(hog)
