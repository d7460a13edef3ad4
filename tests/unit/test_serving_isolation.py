"""Serving runs on numpy and onnxruntime alone: scikit-learn, pandas and MLflow never load, not even
through an import of an import. A fresh interpreter proves it, since this one has them all loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import serving_bundles

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("sklearn", "pandas", "mlflow")

SERVE_ONE_REQUEST = """
import json, sys
from pathlib import Path

import boto3
from fastapi.testclient import TestClient
from moto import mock_aws

import serving.lambda_handler, serving.main
from serving.app import create_app
from serving.settings import ServingSettings
from serving.store import ModelStore

files, heavy = Path(sys.argv[1]), sys.argv[2].split(",")
with mock_aws():
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="unit-models")
    for path in files.rglob("*"):
        if path.is_file():
            key = path.relative_to(files).as_posix()
            s3.put_object(Bucket="unit-models", Key=key, Body=path.read_bytes())
    store = ModelStore("unit-models", max_batch=10)
    client = TestClient(create_app(ServingSettings(models_bucket="unit-models"), store=store, api_key=None))
    store.refresh()
    record = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    response = client.post("/models/iris/predict", json=record)
print(json.dumps({
    "status": response.status_code,
    "prediction": response.json().get("prediction"),
    "loaded": sorted(name for name in sys.modules if name.split(".")[0] in heavy),
}))
"""


def test_serving_never_imports_scikit_learn_pandas_or_mlflow(tmp_path: Path) -> None:
    # GIVEN a real bundle, laid out as in the models bucket
    model = serving_bundles.trained("iris", "iris")
    manifest = serving_bundles.manifest_of(model, "1")
    files = {
        manifest.onnx.key: model.onnx,
        serving_bundles.pointer_to(manifest).manifest_key: manifest.model_dump_json().encode(),
        "pointers/iris.json": serving_bundles.pointer_to(manifest).model_dump_json().encode(),
    }
    for key, body in files.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(body)
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}

    # WHEN a fresh interpreter imports the app, loads the bundle and answers a request
    completed = subprocess.run(
        [sys.executable, "-c", SERVE_ONE_REQUEST, str(tmp_path), ",".join(HEAVY)],
        cwd=ROOT,
        env={**environment, **credentials},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # THEN it answered, and none of the heavy libraries was ever imported
    assert completed.returncode == 0, completed.stderr
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    assert (outcome["status"], outcome["prediction"]) == (200, "setosa")
    assert outcome["loaded"] == []
