"""When the serving store freezes the heap (gc.freeze), measured: at every swap (before issue 19), once
per store after a collection at its first listing (now), or never.

Each way runs in a fresh interpreter (the frozen generation is the process's), as the server runs: the
app built, the S3 client made, two models (iris, house prices; random forests as tests/serving_bundles.py
fits them) loaded through ModelStore, then SWAPS swaps, each model's pointer moving between two
versions. Before each swap, CYCLES_PER_SWAP reference cycles are left as garbage, as requests leave
them (an exception's traceback holds its frames, which hold it); a swap that freezes them keeps them
for good. The bucket is a folder read through common.adapters.s3's two functions, so no S3 emulator
grows the heap being measured.

It reports, after the swaps: the garbage cycles still alive after gc.collect(), the objects in the
frozen generation, and the median time of a full collection (what a request pays when one strikes).

    uv run python benchmarks/gc_freeze.py [--swaps 40] [--results benchmarks/results/gc_freeze.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WAYS = {
    "every swap (before)": "every_swap",
    "once, after a collection (now)": "once",
    "never": "never",
}
CYCLES_PER_SWAP = 200
COLLECTIONS = 15

CHILD = r"""
import gc, hashlib, json, statistics, sys, time, weakref
from pathlib import Path

from common.adapters import s3
from serving import store as store_module
from serving.app import create_app
from serving.settings import ServingSettings

folder, way, swaps, cycles_per_swap, collections = Path(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:6])


def listing(bucket, prefix):
    return [
        (path.relative_to(folder).as_posix(), hashlib.md5(path.read_bytes()).hexdigest())
        for path in sorted((folder / prefix).rglob("*")) if path.is_file()
    ]


def reading(bucket, key):
    path = folder / key
    if not path.is_file():
        return None
    return path.read_bytes(), '"' + hashlib.md5(path.read_bytes()).hexdigest() + '"'


s3.s3_client()  # the server's heap holds its S3 client, built at its first listing
s3.list_objects, s3.get_bytes = listing, reading
if way == "never":
    store_module.keep_out_of_collections = lambda: None
store = store_module.ModelStore("folder", max_batch=10000)
create_app(ServingSettings(models_bucket="folder"), store=store, api_key=None)
store.refresh()


class Cycle:
    pass


alive = []
for swap in range(swaps):
    for _ in range(cycles_per_swap):
        cycle = Cycle()
        cycle.me = cycle
        alive.append(weakref.ref(cycle))
        del cycle
    for model in ("iris", "house-prices"):
        version = "1" if swap % 2 else "2"
        pointer = json.loads((folder / f"pointers/{model}.json").read_text())
        pointer.update(version=version, manifest_key=f"bundles/{model}/{version}/bundle.json")
        pointer["promoted_at"] = f"2026-12-01T00:00:{swap % 60:02d}Z"
        (folder / f"pointers/{model}.json").write_text(json.dumps(pointer))
    store.refresh()
    if way == "every_swap":
        gc.freeze()  # what the store did at each swap before
assert sorted(store.models) == ["house-prices", "iris"], store.readiness()
gc.collect()
ours = {id(ref) for ref in alive}  # the weak references this script keeps to its cycles
leaked = sum(1 for ref in alive if ref() is not None)
timings = []
for _ in range(collections):
    started = time.perf_counter()
    gc.collect()
    timings.append((time.perf_counter() - started) * 1000)
print(json.dumps({
    "leaked": leaked, "made": len(alive), "frozen": gc.get_freeze_count(),
    "collect_ms": statistics.median(timings),
    "tracked": sum(1 for o in gc.get_objects() if id(o) not in ours),
}))
"""


def write_bundles(folder: Path) -> None:
    from tests import serving_bundles

    for base in ("iris", "house-prices"):
        model = serving_bundles.trained(base, base)
        for version in ("1", "2"):
            manifest = serving_bundles.manifest_of(model, version)
            files = {
                manifest.onnx.key: model.onnx,
                serving_bundles.pointer_to(manifest).manifest_key: manifest.model_dump_json().encode(),
            }
            if version == "1":
                files[f"pointers/{base}.json"] = (
                    serving_bundles.pointer_to(manifest).model_dump_json().encode()
                )
            for key, body in files.items():
                (folder / key).parent.mkdir(parents=True, exist_ok=True)
                (folder / key).write_bytes(body)


def run(folder: Path, way: str, swaps: int) -> dict[str, float]:
    environment = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), way, str(swaps), str(CYCLES_PER_SWAP), str(COLLECTIONS)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/gc_freeze.md")
    arguments = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, way in WAYS.items():
            runs = []
            for _ in range(arguments.repeats):
                folder = Path(scratch) / f"{way}-{len(runs)}"
                write_bundles(folder)
                runs.append(run(folder, way, arguments.swaps))
            rows.append((name, runs))
    made = int(rows[0][1][0]["made"])
    lines = [
        "# gc.freeze in the serving store",
        "",
        f"`uv run python benchmarks/gc_freeze.py --swaps {arguments.swaps} --repeats {arguments.repeats}` "
        f"(Python {platform.python_version()}, {os.cpu_count()} cores shared with other work). Two "
        f"models, {arguments.swaps} swaps each, {CYCLES_PER_SWAP} garbage cycles left before each swap "
        f"({made} in all); medians of {arguments.repeats} fresh interpreters, each full collection the "
        f"median of {COLLECTIONS}.",
        "",
        "| when the store freezes | garbage cycles never collected | objects frozen | objects the collector "
        "still tracks | a full collection (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, runs in rows:

        def median(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(run[key] for run in runs)

        lines.append(
            f"| {name} | {median('leaked'):,.0f} of {made:,} | {median('frozen'):,.0f} | "
            f"{median('tracked'):,.0f} | {median('collect_ms'):.1f} |"
        )
    lines.append("")
    arguments.results.write_text("\n".join(lines))
    print("\n".join(lines))  # noqa: T201


if __name__ == "__main__":
    main()
