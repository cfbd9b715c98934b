"""Index scale benchmark: N clustered 256-d float32 unit vectors (default 1M), each index kind polymodal builds
(flat = exact IndexFlatIP, HNSW, IVF-Flat, all inside IndexIDMap2 as `polymodal index` makes them): build time,
memory, and single-query latency (p50/p99) at the smallest efSearch / nprobe whose recall@10 against exact search
is >= 0.95. FAISS runs on 2 threads.

    nice -n 10 python benchmarks/index_scale.py [--n 1000000] [--queries 1000] [--threads 2]

Prints a table and writes benchmarks/results/index_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import psutil

# On a shared CPU, spinning OpenMP threads wait for each other for milliseconds; passive waiting yields the core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
TARGET_RECALL = 0.95


def clustered(n: int, dim: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    """Unit vectors around `clusters` random centres (the same centres for every seed; in chunks: 1M x 256
    float32 is 1 GiB). Different seeds draw different points: queries are not copies of indexed vectors."""
    centres = np.random.default_rng(12345).standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = centres[rng.integers(clusters, size=m)] + spread * rng.standard_normal((m, dim)).astype(np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth, strict=True)]))


def latencies(index, queries: np.ndarray, params) -> tuple[np.ndarray, np.ndarray]:
    """One query at a time, as a search request would: (ids (q, 10), seconds per query)."""
    ids, secs = np.empty((len(queries), 10), np.int64), np.empty(len(queries))
    for i in range(len(queries)):
        t = time.perf_counter()
        _, ids[i] = index.search(queries[i : i + 1], 10, params=params)
        secs[i] = time.perf_counter() - t
    return ids, secs


def write(a: argparse.Namespace, results: list[dict], t0: float, faiss) -> None:
    out = {
        "benchmark": "index_scale",
        "command": "nice -n 10 python benchmarks/index_scale.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "out"),
        "n": a.n, "dim": a.dim, "queries": a.queries, "clusters": a.clusters, "spread": a.spread, "threads": a.threads,
        "target_recall@10": TARGET_RECALL, "faiss": faiss.__version__, "machine": platform.machine(),
        "cpus_visible": os.cpu_count(), "load_average": os.getloadavg(), "seconds": round(time.perf_counter() - t0, 1),
        "results": results,
    }  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))


def main() -> None:
    import faiss

    from polymodal.retrieval.index import make_index, search_params

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--flat-queries", type=int, default=200, help="exact search is slow: fewer timed queries")
    ap.add_argument("--clusters", type=int, default=10000)
    ap.add_argument("--spread", type=float, default=0.05, help="noise std per dimension around a centre")
    ap.add_argument("--threads", type=int, default=2, help="FAISS threads for building and batch search")
    ap.add_argument(
        "--search-threads", type=int, default=1, help="threads of a single-query search (one query uses one core)"
    )
    ap.add_argument("--kinds", default="flat,hnsw,ivf")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "index_scale.json")
    a = ap.parse_args()
    faiss.omp_set_num_threads(a.threads)
    t0 = time.perf_counter()
    base = clustered(a.n, a.dim, a.clusters, a.spread, seed=0)
    queries = clustered(a.queries, a.dim, a.clusters, a.spread, seed=1)
    print(f"data: {a.n:,} x {a.dim} ({base.nbytes / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    ids = np.arange(a.n, dtype=np.int64)

    # Ground truth: exact inner-product search (batched, so it is fast), the flat index itself.
    t = time.perf_counter()
    exact = faiss.IndexFlatIP(a.dim)
    exact.add(base)
    _, truth = exact.search(queries, 10)
    del exact
    print(f"ground truth: {time.perf_counter() - t:.1f} s")

    results = []
    for kind in a.kinds.split(","):
        before = rss_mb()
        t = time.perf_counter()
        sample = base[np.random.default_rng(1).choice(a.n, size=min(a.n, 100_000), replace=False)]
        params = {"nlist": int(4 * np.sqrt(a.n))} if kind == "ivf" else {}
        index = make_index(kind, a.dim, sample, params)
        train_s = time.perf_counter() - t
        index.add_with_ids(base, ids)
        build_s = time.perf_counter() - t
        mem = rss_mb() - before
        settings = {"params": {"efSearch": 64} if kind == "hnsw" else params | {"nprobe": 1}}
        print(f"{kind}: built in {build_s:.1f} s (train {train_s:.1f} s), +{mem:.0f} MiB")
        sweep, chosen = [], None
        knobs = {
            "flat": [None],
            "hnsw": [16, 32, 48, 64, 96, 128, 192, 256, 384, 512],
            "ivf": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
        }
        for knob in knobs[kind]:
            if kind == "hnsw":
                settings["params"]["efSearch"] = knob
            elif kind == "ivf":
                settings["params"]["nprobe"] = knob
            p = search_params(kind, settings)
            nq = a.flat_queries if kind == "flat" else a.queries
            faiss.omp_set_num_threads(a.search_threads)
            latencies(index, queries[:20], p)  # warm up
            found, secs = latencies(index, queries[:nq], p)
            rec = recall_at_10(found, truth[:nq])
            row = {"knob": knob, "recall@10": round(rec, 4), "p50_ms": round(1000 * float(np.percentile(secs, 50)), 3),
                   "p99_ms": round(1000 * float(np.percentile(secs, 99)), 3), "queries": nq}  # fmt: skip
            faiss.omp_set_num_threads(a.threads)
            sweep.append(row)
            print(f"  {kind} {('efSearch' if kind == 'hnsw' else 'nprobe' if kind == 'ivf' else '')}={knob}: {row}")
            if rec >= TARGET_RECALL:
                chosen = row
                break
        results.append({
            "kind": kind, "knob_name": {"hnsw": "efSearch", "ivf": "nprobe"}.get(kind),
            "build_seconds": round(build_s, 1),
            "train_seconds": round(train_s, 1), "memory_mib": round(mem, 1), "params": settings["params"],
            "chosen": chosen, "sweep": sweep,
        })  # fmt: skip
        del index
        write(a, results, t0, faiss)  # after each kind, so a cut-off run keeps what it measured
    print("\n| index | build s | memory MiB | setting | recall@10 | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        c = r["chosen"] or r["sweep"][-1]
        knob = f"{r['knob_name']}={c['knob']}" if r["knob_name"] else "exact"
        print(
            f"| {r['kind']} | {r['build_seconds']} | {r['memory_mib']} | {knob} | {c['recall@10']} | "
            f"{c['p50_ms']} | {c['p99_ms']} |"
        )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
