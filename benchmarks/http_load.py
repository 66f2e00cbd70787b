"""HTTP serving under load (the contract in ../shared/DESIGN.md): one JSON line per level, the floor measured in the same run.

online_http_load — `feature-pipelines serve --workers 2` (one per core) on a redis-server this run starts, holding
                   1,000,000 entities x 5 Float64 of one online feature; batch-1 POST /online-features (random entities)
                   from a load generator on loopback (feature_pipelines_tests/load_client.py: asyncio + uvloop, in this
                   process, sharing the 2 cores with the server), `duration` seconds per level (default 20):
                       online_http_load_c1 / _c8 / _c32 / _c128   1, 8, 32, 128 concurrent keep-alive connections
                       online_http_load_churn                     32 concurrent clients, a new connection per request
                   value = requests/s answered 200 (every answer is read and checked; anything else counts in `errors`),
                   p50/p99 per request (churn: from connect to last byte). floor = the same load on the same uvicorn
                   (same workers, httptools, uvloop) serving a hand-written ASGI app: json.loads, one redis.asyncio MGET,
                   the found flags as JSON. ratio = floor rate / our rate. server_* = RSS and open fds of the server
                   (parent + workers) before and after the level: flat means no per-connection leak.

Run alone: .venv/bin/python benchmarks/http_load.py [--duration 20] [--workers 2] [--threads 4] [--levels c1,c8,c32,c128,churn]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from feature_pipelines_tests import load_client
from feature_pipelines_tests.servers import free_port, start_redis

ENTITIES = 1_000_000
COLUMNS = [f"amount_{i}" for i in range(5)]
FEATURE = "bench_spend"
PREFIX = "bench"
LEVELS = {"c1": 1, "c8": 8, "c32": 32, "c128": 128}
CHURN_CLIENTS = 32
MACHINE = f"{os.cpu_count()} cores"
FEATURES_SOURCE = f'''
from feature_pipelines import Entity, Feature, Rolling, Source

bench_spend = Feature(name="{FEATURE}", entities=[Entity("customer", join_key="customer_id")],
                      source=Source("unused.parquet", timestamp="ts"), start="2024-01-01",
                      metrics=[Rolling(["1d"], {{"amount": ["sum"]}})], online=True)
'''


def _frame(n: int) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    ts = datetime(2024, 1, 5, tzinfo=UTC)
    return pl.DataFrame({"customer_id": pl.int_range(n, eager=True).cast(pl.String).str.pad_start(7, "0"),
                         "feature_timestamp": pl.Series([ts], dtype=pl.Datetime("us", "UTC")).new_from_index(0, n),
                         **{c: rng.gamma(2.0, 50.0, n) for c in COLUMNS}})


def _project(tmp: Path, redis_url: str) -> Path:
    """A project (features package, profile, offline manifest) whose online feature is already in Redis."""
    from feature_pipelines.online import RedisOnlineStore
    from feature_pipelines.store import LocalStore

    root = tmp / "http_load_project"
    (root / "benchfeatures").mkdir(parents=True, exist_ok=True)
    (root / "benchfeatures" / "__init__.py").write_text(FEATURES_SOURCE)
    (root / "pyproject.toml").write_text('[project]\nname = "httpbench"\n\n[tool.feature_pipelines]\npackage = "benchfeatures"\n')
    (root / "env").mkdir(exist_ok=True)
    (root / "env" / "bench.yaml").write_text(f"offline_store:\n  kind: local\n  path: ./store\nonline_store:\n  kind: redis\n"
                                             f"  url: {redis_url}\n  key_prefix: {PREFIX}\n")
    LocalStore(root / "store").write_partition(FEATURE, "2024-01-04", _frame(10), keys=["customer_id"], timestamp="feature_timestamp",
                                               config_hash="bench")
    with RedisOnlineStore(redis_url, key_prefix=PREFIX) as store:
        store.write(FEATURE, 1, ["customer_id"], _frame(ENTITIES))
    return root


def _bodies(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [json.dumps({"features": [FEATURE], "entities": [{"customer_id": f"{x:07d}"}]}).encode() for x in rng.integers(0, ENTITIES, n)]


def _tree(pid: int):
    import psutil

    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def _usage(pid: int) -> tuple[float, int, float]:
    """RSS (MB), open file descriptors and CPU seconds used so far of a server process and its workers."""
    procs = _tree(pid)
    cpu = sum(sum(p.cpu_times()[:2]) for p in procs)
    return sum(p.memory_info().rss for p in procs) / 2**20, sum(p.num_fds() for p in procs), cpu


@contextmanager
def _process(command: list[str], cwd: Path, env: dict, port: int):
    log = cwd / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            result = load_client.keep_alive("127.0.0.1", port, _bodies(1, 0), 1, per_connection=1, timeout=5)
            if result.requests and not result.errors:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server {command} did not answer: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- the floor: a hand-written ASGI app on the same uvicorn --------------------------------------


def floor_app():
    """uvicorn factory: POST body -> json.loads -> one MGET (redis.asyncio) -> {"rows": [found, ...]}."""
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(os.environ["HTTP_LOAD_REDIS_URL"])
    prefix = f"{PREFIX}:{FEATURE}:v1:"

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = json.loads(body)
        values = await client.mget([prefix + e["customer_id"] for e in request["entities"]])
        answer = b'{"rows":' + json.dumps([v is not None for v in values]).encode() + b"}"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    return app


def _serve_floor(port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run("http_load:floor_app", factory=True, host="127.0.0.1", port=port, workers=workers, app_dir=str(HERE),
                http="httptools", loop="uvloop", ws="none", access_log=False, log_level="warning", backlog=2048)


# ---- the workload --------------------------------------------------------------------------------


def online_http_load(tmp: Path, duration: float = 20.0, workers: int = 2, threads: int = 4, levels: list[str] | None = None) -> list[dict]:
    levels = levels or [*LEVELS, "churn"]
    redis = start_redis()
    try:
        root = _project(tmp, redis.url)
        env = {**os.environ, "FEATURE_PIPELINES_PROJECT_DIR": str(root), "FEATURE_PIPELINES_ENV_DIR": str(root / "env"),
               "FEATURE_PIPELINES_PROFILE": "bench", "HTTP_LOAD_REDIS_URL": redis.url}
        ours_port, floor_port = free_port(), free_port()
        ours_cmd = [sys.executable, "-m", "feature_pipelines.cli", "serve", "--port", str(ours_port), "--workers", str(workers),
                    "--threads", str(threads)]
        floor_cmd = [sys.executable, str(Path(__file__).resolve()), "--floor-server", str(floor_port), "--workers", str(workers)]
        bodies = _bodies(20_000, 1)
        out = []
        with _process(ours_cmd, root, env, ours_port) as ours, _process(floor_cmd, root, env, floor_port) as floor:
            for port in (ours_port, floor_port):  # warm both: imports, schema caches, allocator
                load_client.keep_alive("127.0.0.1", port, bodies[:2000], 8, duration=min(3.0, duration))
            for level in levels:
                runs = {}
                for label, port, proc in (("ours", ours_port, ours), ("floor", floor_port, floor)):
                    before = _usage(proc.pid)
                    if level == "churn":
                        result = load_client.churn("127.0.0.1", port, bodies, CHURN_CLIENTS, duration=duration)
                    else:
                        result = load_client.keep_alive("127.0.0.1", port, bodies, LEVELS[level], duration=duration)
                    time.sleep(1.0)  # let the server see the clients' closes before counting its descriptors
                    runs[label] = (result, before, _usage(proc.pid))
                (ours_r, (rss0, fds0, cpu0), (rss1, fds1, cpu1)), (floor_r, floor0, floor1) = runs["ours"], runs["floor"]
                cpu_ms = (cpu1 - cpu0) * 1000 / max(ours_r.requests, 1)
                floor_cpu_ms = (floor1[2] - floor0[2]) * 1000 / max(floor_r.requests, 1)
                rate = ours_r.requests / ours_r.seconds
                good = (ours_r.requests - ours_r.errors) / ours_r.seconds
                floor_rate = (floor_r.requests - floor_r.errors) / floor_r.seconds
                out.append({
                    "workload": f"online_http_load_{level}", "metric": "requests_per_s", "value": round(good), "floor": round(floor_rate),
                    "ratio": round(floor_rate / good, 2) if good else None,
                    "p50_ms": round(ours_r.percentile(50), 3), "p99_ms": round(ours_r.percentile(99), 3),
                    "floor_p50_ms": round(floor_r.percentile(50), 3), "floor_p99_ms": round(floor_r.percentile(99), 3),
                    "server_cpu_ms_per_request": round(cpu_ms, 3), "floor_server_cpu_ms_per_request": round(floor_cpu_ms, 3),
                    "errors": ours_r.errors, "floor_errors": floor_r.errors, "error_samples": ours_r.samples[:3],
                    "requests": ours_r.requests, "rate_incl_errors": round(rate), "connections": ours_r.connections,
                    "concurrency": CHURN_CLIENTS if level == "churn" else LEVELS[level], "keep_alive": level != "churn",
                    "server_rss_mb_start": round(rss0), "server_rss_mb_end": round(rss1), "server_fds_start": fds0, "server_fds_end": fds1,
                    "workers": workers, "threads": threads, "seconds": round(ours_r.seconds, 1), "batch": 1,
                    "notes": "load generator in-process on the same cores", "machine": MACHINE})
    finally:
        redis.stop()
    return out


WORKLOADS = {"online_http_load": online_http_load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level and per server (default 20)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--levels", default="c1,c8,c32,c128,churn")
    parser.add_argument("--floor-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_server:
        _serve_floor(args.floor_server, args.workers)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for line in online_http_load(Path(tmp), args.duration, args.workers, args.threads, args.levels.split(",")):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
