"""Where a lone request's time goes inside `polymodal serve`, stage by stage, back to back and after idle.

Fits serve_load.py's every-kind model (and its ONNX graph), then runs one single-instance request at a time through
the server's own stages in this process: parsing the body, checking the values (`InstanceChecker`), decoding the
files (`ModelService.decode`), the batch's columns (`ModelService.columns`), preprocessing
(`FeaturePipeline.features`), the model (`engine.outputs`), the answers and their JSON. Each request is timed back to
back and again with a pause before it (`--gap`, default 0.1 s: what 10 req/s leaves), since on a VM a call after
idle can cost many times what it costs back to back. No HTTP: the load test is serve_load.py.

    python benchmarks/serve_stages.py [--runtime torch,onnx] [--gap 0.1] [--requests 120]

Prints a table (median ms per stage) and writes benchmarks/results/serve_stages.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
STAGES = ("parse", "check", "decode", "columns", "features", "model", "answer", "json")


def time_stages(runtime: str, model: Path, bodies: list[bytes], gap: float, n: int) -> dict[str, float]:
    from polymodal.serving.common import json_bytes
    from polymodal.serving.config import ServeConfig
    from polymodal.serving.inputs import InstanceChecker, parse_instances
    from polymodal.serving.service import ModelService

    service = ModelService(model, runtime=runtime, threads=1)
    config = ServeConfig(model=str(model), runtime=runtime)
    checker = InstanceChecker(service.schema, config)
    pipeline = service.engine.pipeline
    times: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}
    for i in range(n + 10):  # the first 10 warm up
        if gap:
            time.sleep(gap)
        t = [time.perf_counter()]
        instances = parse_instances(bodies[i % len(bodies)], config)
        t.append(time.perf_counter())
        rows = checker.check_all(instances)
        t.append(time.perf_counter())
        decoded = service.decode(rows)
        t.append(time.perf_counter())
        columns = service.columns(decoded.rows)
        t.append(time.perf_counter())
        features = pipeline.features(columns, decoded.media, {})
        t.append(time.perf_counter())
        outputs = service.engine.outputs(features)
        t.append(time.perf_counter())
        answers = [service.answer(o, p) for o, p in zip(outputs, features.present, strict=True)]
        t.append(time.perf_counter())
        json_bytes({"predictions": answers})
        t.append(time.perf_counter())
        if i >= 10:
            for s, a, b in zip(STAGES, t, t[1:], strict=False):
                times[s].append((b - a) * 1000)
            times["total"].append((t[-1] - t[0]) * 1000)
    return {s: round(float(np.median(v)), 3) for s, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", default="torch,onnx")
    ap.add_argument("--gap", type=float, default=0.1, help="seconds of idle before each request in the idle pass")
    ap.add_argument("--requests", type=int, default=120)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_stages.json")
    a = ap.parse_args()
    import serve_load
    import torch

    from polymodal.model.artifact import write_json

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="serve_stages_"))
    folder, graph, df, _ = serve_load.fit_model(work)
    bodies = serve_load.good_bodies(pd.read_csv(work / "data" / "test.csv"), work / "data")
    rows = []
    for runtime in a.runtime.split(","):
        model = graph if runtime == "onnx" else folder
        for gap in (0.0, a.gap):
            r = time_stages(runtime, model, bodies, gap, a.requests)
            rows.append({"runtime": runtime, "idle_before_s": gap, **r})
            print(f"{runtime:6s} idle {gap:4.2f} s  " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    report = {
        "benchmark": "serve_stages",
        "command": "python benchmarks/serve_stages.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "what": "median ms per stage of a one-instance request (every modality), in process, 1 thread",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg()[0],
            "niceness": os.nice(0),
        },  # fmt: skip
        "requests": a.requests,
        "rows": rows,
    }
    write_json(a.out, report)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
