"""Overload: a real `polymodal serve` process flooded by many keep-alive clients at once answers every request
with 200 or 503 (+ Retry-After) and nothing else, refuses at once rather than queueing, and keeps the latency of
the requests it accepts bounded: far below the same flood's against a server whose queue has no practical bound.
"""

import asyncio
import json
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from test_serving import fit_model, instance, start_server

CLIENTS = 64  # concurrent connections, each sending its requests back to back
PER_CLIENT = 5


async def _post(reader, writer, body: bytes) -> tuple[int, dict[str, str]]:
    head = f"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    head += "\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    lines = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)).decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 60)
    return int(lines[0].split()[1]), headers


async def flood(url: str, body: bytes) -> list[tuple[int, float, dict[str, str]]]:
    """(status, seconds, headers) of every request; status -1 when the connection failed."""
    host, port = url.removeprefix("http://").split(":")
    out: list[tuple[int, float, dict[str, str]]] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for _ in range(PER_CLIENT):
                t = time.perf_counter()
                try:
                    status, headers = await _post(reader, writer, body)
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                    out.append((-1, time.perf_counter() - t, {"error": repr(e)}))
                    return
                out.append((status, time.perf_counter() - t, headers))
        finally:
            writer.close()

    await asyncio.gather(*[client() for _ in range(CLIENTS)])
    return out


@pytest.fixture(scope="module")
def floods(tmp_path_factory):
    """The same flood against a server admitting 4 rows, then against one admitting 100,000 (no bound)."""
    model, test = fit_model(tmp_path_factory)
    body = json.dumps({"instances": [instance(pd.read_csv(test).iloc[0], test.parent)]}).encode()
    results = {}
    for name, queue in (("bounded", "4"), ("unbounded", "100000")):
        log = tmp_path_factory.mktemp(f"overload-{name}") / "server.log"
        # One row per pass through the eager network (no ONNX Runtime or trace), so that the model, not the HTTP
        # layer, is what the requests queue for.
        proc, url = start_server(model, log, "--max-queue", queue, "--max-batch-size", "1", "--no-trace")
        try:
            answers = asyncio.run(flood(url, body))
            after = httpx.post(url + "/v1/predict", content=body, headers={"content-type": "application/json"})
            results[name] = (answers, after, httpx.get(url + "/metrics").text, proc.poll(), log)
        finally:
            proc.terminate()
            proc.wait(30)
    return results


def server_durations(log) -> dict[int, list[float]]:
    """status -> the server's own durations (ms) of the /v1/predict requests, from its JSON access log."""
    out: dict[int, list[float]] = {}
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"event":"access"' in line:
            entry = json.loads(line)
            if entry["path"] == "/v1/predict":
                out.setdefault(entry["status"], []).append(entry["duration_ms"])
    return out


def test_every_answer_to_a_flood_is_200_or_503_with_retry_after(floods):
    answers, after, metrics, exited, log = floods["bounded"]
    assert len(answers) == CLIENTS * PER_CLIENT
    statuses = [s for s, _, _ in answers]
    assert set(statuses) == {200, 503}, [h for s, _, h in answers if s not in (200, 503)][:3]
    assert all(int(h["retry-after"]) >= 1 for s, _, h in answers if s == 503)
    # Refusals are immediate: answered before any work, never waiting behind the model (the server's own timing;
    # seen from the clients, both wait alike for the event loop, busy with 64 connections).
    durations = server_durations(log)
    assert len(durations[503]) == statuses.count(503)
    assert np.median(durations[503]) < 0.5 * np.median(durations[200]), durations
    # The server is unharmed: still running, answering normally, and it counted its refusals.
    assert exited is None and after.status_code == 200
    line = next(x for x in metrics.splitlines() if x.startswith('polymodal_requests_total{endpoint="/v1/predict"')
                and 'status="503"' in x)  # fmt: skip
    assert float(line.split()[-1]) == statuses.count(503)


def test_accepted_latency_stays_bounded_under_the_flood(floods):
    bounded = [t for s, t, _ in floods["bounded"][0] if s == 200]
    unbounded = [t for s, t, _ in floods["unbounded"][0] if s == 200]
    assert len(unbounded) == CLIENTS * PER_CLIENT  # without a bound everything is accepted ...
    # ... and waits behind the whole flood (about 64 passes), where the bound lets at most 4 rows in at a time.
    p95_bounded, p95_unbounded = np.percentile(bounded, 95), np.percentile(unbounded, 95)
    assert p95_bounded < 0.5 * p95_unbounded, (p95_bounded, p95_unbounded)
