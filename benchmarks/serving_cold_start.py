"""The serving function's first invocation (a cold start's request) against the number of models in the
stack: loading every model inside it (before issue 19) or only the model the request names (now).

Each invocation runs in a fresh interpreter, as a new execution environment does: moto's S3 filled with
N models (the same 10-tree forest of house prices as tests/serving_bundles.py fits, under N names),
then one prediction request for the first model timed through `serving.lambda_handler.handler` (the
sample event of events/serving_apigw_predict.json pointed at it), the app built inside it as on
Lambda. moto answers in microseconds where S3 takes milliseconds, so these times are the loads' CPU
(ONNX session, check records, request schemas, the one collection before gc.freeze) and understate a
real cold start; the function's timeout is 15 s (template.yaml).

    uv run python benchmarks/serving_cold_start.py [--models 1 8 32 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUCKET = "bench-models"
RECORD = {"area_m2": 80.0, "rooms": 3, "year_built": 1990, "district": "north", "heating": "gas"}

CHILD = r"""
import json, sys, time
from pathlib import Path

import boto3
from moto import mock_aws

files, bucket, model, way, event = Path(sys.argv[1]), *sys.argv[2:6]
lazy = way == "lazy"
with mock_aws():
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    for path in sorted(files.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=path.relative_to(files).as_posix(), Body=path.read_bytes())

    from serving import lambda_handler
    from serving.app import create_app
    from serving.settings import get_serving_settings
    from serving.store import ModelStore

    def app_as_before(**arguments):
        settings = get_serving_settings()
        store = ModelStore(settings.models_bucket, max_batch=settings.max_batch, lazy=False)
        return create_app(settings, store=store, **arguments)

    if not lazy:
        lambda_handler.create_app = app_as_before

    class Context:
        function_name, memory_limit_in_mb, aws_request_id = "serving", 1024, "bench"
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:serving"

    started = time.perf_counter()
    response = lambda_handler.handler(json.loads(event), Context())
    elapsed = (time.perf_counter() - started) * 1000
    store = lambda_handler.asgi_handler().app.state.store
assert response["statusCode"] == 200, response
print(json.dumps({"ms": elapsed, "loaded": len(store.models)}))
"""


def write_models(folder: Path, count: int) -> list[str]:
    from tests import serving_bundles

    trained = serving_bundles.trained("house-prices", "house-prices")
    names = [f"houses-{index:03d}" for index in range(count)]
    for name in names:
        renamed = dataclasses.replace(trained, contract=serving_bundles.contract_for("house-prices", name))
        manifest = serving_bundles.manifest_of(renamed, "1")
        pointer = serving_bundles.pointer_to(manifest)
        files = {
            manifest.onnx.key: trained.onnx,
            pointer.manifest_key: manifest.model_dump_json().encode(),
            f"pointers/{name}.json": pointer.model_dump_json().encode(),
        }
        for key, body in files.items():
            (folder / key).parent.mkdir(parents=True, exist_ok=True)
            (folder / key).write_bytes(body)
    return names


def first_invocation(folder: Path, model: str, way: str) -> dict[str, float]:
    template = json.loads((ROOT / "events/serving_apigw_predict.json").read_text())
    path = f"/models/{model}/predict"
    event = {**template, "path": path, "body": json.dumps(RECORD), "pathParameters": {"proxy": path[1:]}}
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    environment.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",  # noqa: S106 - moto's
        AWS_DEFAULT_REGION="us-east-1",
        ARRIVAL_SERVING_MODELS_BUCKET=BUCKET,
    )
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), BUCKET, model, way, json.dumps(event)],
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
    parser.add_argument("--models", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/serving_cold_start.md")
    arguments = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for count in arguments.models:
            folder = Path(scratch) / str(count)
            first = write_models(folder, count)[0]
            runs: dict[str, list[dict[str, float]]] = {"eager": [], "lazy": []}
            for _ in range(arguments.repeats):
                for way in runs:  # in turn, so that a slow moment falls on both
                    runs[way].append(first_invocation(folder, first, way))
            rows.append((count, runs))
    lines = [
        "# Serving on Lambda: the first request of a cold start",
        "",
        f"`uv run python benchmarks/serving_cold_start.py --models {' '.join(map(str, arguments.models))} "
        f"--repeats {arguments.repeats}`: the first invocation's time in ms, the median of "
        f"{arguments.repeats} fresh interpreters; moto's S3 (the loads' CPU only: S3's own latency comes "
        f"on top on AWS), 10-tree forests of house prices, {os.cpu_count()} cores shared with other work.",
        "",
        "| models in the stack | every model loaded in the first request (before) | the one asked for (now) "
        "| models it loaded, before / now |",
        "|---:|---:|---:|---:|",
    ]
    for count, runs in rows:
        eager = statistics.median(run["ms"] for run in runs["eager"])
        lazy = statistics.median(run["ms"] for run in runs["lazy"])
        loaded = f"{runs['eager'][0]['loaded']:.0f} / {runs['lazy'][0]['loaded']:.0f}"
        lines.append(f"| {count} | {eager:,.0f} | {lazy:,.0f} | {loaded} |")
    lines.append("")
    arguments.results.write_text("\n".join(lines))
    print("\n".join(lines))  # noqa: T201


if __name__ == "__main__":
    main()
