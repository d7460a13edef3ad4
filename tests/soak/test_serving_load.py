"""Load: serving at 16 keep-alive connections through 10 promotions made by the real trainer, with not
one failed request, and the served version going through every promoted version in order."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from tests import datasets
from tests.e2e.conftest import Chain
from tests.helpers import eventually
from tests.soak import figures

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]

CONNECTIONS = int(os.environ.get("ARRIVAL_SOAK_CONNECTIONS", "16"))
PROMOTIONS = int(os.environ.get("ARRIVAL_SOAK_PROMOTIONS", "10"))
SECTION = "Serving at 16 connections through 10 promotions"
BAND_M2 = 40.0
ROWS = 200


def band_frame(band: int) -> pd.DataFrame:
    """Houses whose areas lie in a band of their own, above every earlier band. Gradient boosting does
    not extrapolate: a champion that never saw a band prices its houses as the largest it knows, so
    each challenger, trained on one more band, beats it on the shared holdout (the house-prices
    contract promotes any lower RMSE: its margin is 0)."""
    frame = datasets.house_frame(ROWS, seed=500 + band)
    generator = np.random.default_rng(900 + band)
    area = generator.uniform(30 + band * BAND_M2, 30 + (band + 1) * BAND_M2, ROWS).round(1)
    frame["area_m2"] = area
    frame["rooms"] = np.clip((area / 25).round(), 1, 50)
    frame["price"] = (area * 3000 + generator.normal(0, 20000, ROWS)).round(0)
    return frame


RECORD = json.dumps(
    {"area_m2": 120.0, "rooms": 5.0, "year_built": 1990.0, "district": "north", "heating": "gas"}
).encode()


@dataclass(frozen=True)
class Answer:
    received_at: float  # epoch seconds, to compare with the pointer's promoted_at
    latency: float
    version: str


class Clients:
    """Keep-alive connections that each ask for a prediction as soon as the last one is answered."""

    def __init__(self, port: int, api_key: str, model: str, connections: int) -> None:
        self.port, self.api_key, self.path = port, api_key, f"/models/{model}/predict"
        self.answers: list[list[Answer]] = [[] for _ in range(connections)]
        self.failures: list[str] = []
        self.first_seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(slot,), daemon=True) for slot in range(connections)
        ]

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def _run(self, slot: int) -> None:
        connection, answers = self._connect(), self.answers[slot]
        headers = {"Content-Type": "application/json", "x-api-key": self.api_key}
        while not self._stop.is_set():
            sent = time.perf_counter()
            try:
                connection.request("POST", self.path, RECORD, headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as error:
                self._failed(f"connection {slot}: {error!r}")
                connection.close()
                connection = self._connect()
                continue
            latency = time.perf_counter() - sent
            version = response.getheader("X-Model-Version", "")
            if response.status != 200:
                self._failed(f"connection {slot}: HTTP {response.status} from version {version!r}")
            answers.append(Answer(time.time(), latency, version))
            if version not in self.first_seen:
                with self._lock:
                    self.first_seen.setdefault(version, answers[-1].received_at)
        connection.close()

    def _failed(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def all_answers(self) -> list[Answer]:
        return [answer for answers in self.answers for answer in answers]

    @contextmanager
    def running(self) -> Iterator[Clients]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=30)


@dataclass
class Promotion:
    version: str
    uploaded_at: float
    promoted_at: float  # the pointer's promoted_at: when the trainer moved serving's pointer
    first_answer_at: float | None = None

    @property
    def switch_seconds(self) -> float | None:
        return None if self.first_answer_at is None else self.first_answer_at - self.promoted_at


@dataclass
class ServingReport:
    promotions: list[Promotion] = field(default_factory=list)
    load_seconds: float | None = None
    failure: str | None = None

    def recorded(self, clients: Clients) -> AbstractContextManager[None]:
        return figures.recorded(SECTION, self, lambda: self.render(clients))

    def render(self, clients: Clients) -> str:
        answers = clients.all_answers()
        latencies_ms = [answer.latency * 1000 for answer in answers]
        switches = [p.switch_seconds for p in self.promotions if p.switch_seconds is not None]
        rate = len(answers) / self.load_seconds if self.load_seconds else float("nan")
        summary = [
            ("connections (keep-alive, closed loop)", CONNECTIONS),
            ("promotions under load (by the trainer)", len(self.promotions)),
            ("requests answered", f"{len(answers):,}"),
            ("under load for", f"{figures.optional(self.load_seconds, '.0f')} s ({rate:,.0f} req/s)"),
            ("failed requests (non-2xx or connection errors)", len(clients.failures)),
            (
                "latency p50",
                f"{figures.optional(figures.percentile(latencies_ms, 0.5) if answers else None, '.1f')} ms",
            ),
            (
                "latency p99",
                f"{figures.optional(figures.percentile(latencies_ms, 0.99) if answers else None, '.1f')} ms",
            ),
            ("latency max", f"{figures.optional(max(latencies_ms) if answers else None, '.1f')} ms"),
            (
                "switch time, median",
                f"{figures.optional(figures.median(switches) if switches else None, '.2f')} s",
            ),
            ("switch time, max", f"{figures.optional(max(switches) if switches else None, '.2f')} s"),
            ("versions served, in the order first seen", " -> ".join(_in_order(clients.first_seen))),
        ]
        per_promotion = [
            (
                index + 1,
                promotion.version,
                f"{promotion.promoted_at - promotion.uploaded_at:.1f}",
                figures.optional(promotion.switch_seconds, ".2f"),
            )
            for index, promotion in enumerate(self.promotions)
        ]
        verdict = f"**This run failed:** {self.failure}\n\n" if self.failure else ""
        return (
            f"{verdict}A house-prices model served by the stack's EC2 serving instance (`arrival-serve`, "
            f"booted by the local EC2 agent). {CONNECTIONS} threads, each with its own keep-alive "
            "`http.client` connection, post one record to `/models/<model>/predict` back to back, while "
            f"{PROMOTIONS} datasets are uploaded one after another, each made to beat the champion (a band "
            f"of {BAND_M2:.0f} m2 houses above every earlier band, {ROWS} rows); each is trained by the real "
            "trainer and promoted by its gate (no rollback, no pointer moved by hand). The clients, the "
            "server, the trainer and the local cloud share the machine's cores, and the clients are "
            "Python threads under one GIL: the request rate measures them as much as the server (the "
            "server alone, under wrk: benchmarks/results/serving.md). *Switch time*: from the pointer's "
            "`promoted_at` (the trainer moving serving's pointer) to the first answer carrying the "
            "new `X-Model-Version`; *upload -> promoted*: from the upload to `promoted_at`.\n\n"
            + figures.table(("figure", "value"), summary)
            + "\n\n"
            + figures.table(
                ("promotion", "version", "upload -> promoted, s", "switch time, s"), per_promotion
            )
        )


def _in_order(first_seen: dict[str, float]) -> list[str]:
    return [version for version, _ in sorted(first_seen.items(), key=lambda item: item[1])]


def _served_version(port: int, api_key: str, model: str) -> str | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", f"/models/{model}", headers={"x-api-key": api_key})
        response = connection.getresponse()
        body = response.read()
    except OSError:
        return None
    finally:
        connection.close()
    return str(json.loads(body)["version"]) if response.status == 200 else None


def _pointer(chain: Chain, model: str) -> dict[str, str]:
    body = chain.s3.get_object(Bucket=chain.outputs["ModelsBucketName"], Key=f"pointers/{model}.json")["Body"]
    pointer: dict[str, str] = json.loads(body.read())
    return pointer


def _epoch(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def test_serving_at_16_connections_through_10_promotions_fails_no_request(
    chain: Chain, serving_port: int, unique: str
) -> None:
    # GIVEN a regression model whose first dataset made a champion, served by the instance
    model = f"soak-serve-{unique}"
    chain.put_contract(model, datasets.contract_yaml("house-prices", model))
    chain.upload(f"{model}/band-00.csv", datasets.to_csv(band_frame(0)))
    first = chain.wait_versions(model, 1)[0]
    assert "promotion" in first.tags, first.tags
    api_key = chain.api_key()
    eventually(
        lambda: _served_version(serving_port, api_key, model) == first.version, 60, what="the champion served"
    )

    clients = Clients(serving_port, api_key, model, CONNECTIONS)
    report = ServingReport()
    with report.recorded(clients), clients.running():
        eventually(lambda: first.version in clients.first_seen, 30, what="the clients' first answer")
        load_started = time.monotonic()
        # WHEN better datasets arrive one after another while the clients keep asking
        for band in range(1, PROMOTIONS + 1):
            report.promotions.append(_promote_through_the_trainer(chain, clients, model, band))
        report.load_seconds = time.monotonic() - load_started

    # THEN not one request failed
    assert clients.failures == [], clients.failures[:10]
    # AND the answers went through every promoted version in order, none of them ever going back
    promoted = [first.version, *(promotion.version for promotion in report.promotions)]
    assert _in_order(clients.first_seen) == promoted
    for answers in clients.answers:
        versions = [int(answer.version) for answer in answers]
        assert versions == sorted(versions), "a connection was answered by an older version after a newer one"


def _promote_through_the_trainer(chain: Chain, clients: Clients, model: str, band: int) -> Promotion:
    uploaded_at = time.time()
    chain.upload(f"{model}/band-{band:02d}.csv", datasets.to_csv(band_frame(band)))
    versions = chain.wait_versions(model, band + 1, timeout=600)
    assert len(versions) == band + 1, [version.version for version in versions]  # one version per upload
    newest = versions[-1]
    assert "promotion" in newest.tags, newest.tags
    pointer = eventually(
        lambda: (found := _pointer(chain, model))["version"] == newest.version and found,
        30,
        what=f"serving's pointer at version {newest.version}",
    )
    promotion = Promotion(newest.version, uploaded_at, _epoch(pointer["promoted_at"]))
    promotion.first_answer_at = eventually(
        lambda: clients.first_seen.get(newest.version),
        60,
        interval=0.05,
        what=f"version {newest.version} served",
    )
    return promotion
