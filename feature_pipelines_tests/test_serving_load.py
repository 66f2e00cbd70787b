"""`feature-pipelines serve` under load and abuse, as real processes on real stores (SQLite file, redis-server).

- thousands of client connections (a new one per request, and 1,200 concurrent keep-alive ones) with
  0 errors, a bounded number of store connections, and the server's file descriptors and memory
  back where they started;
- every malformed request answered with a JSON 4xx (never a dropped connection, an HTML page or a 503);
- /ready follows the store (503 while Redis is down, 200 when it is back) while /health stays up;
- /metrics counts requests, latencies, batch sizes and store errors across workers;
- SIGTERM ends the server (and its workers) with exit status 0; TLS serves HTTPS.

No timing assertions: waits are liveness bounds, timeouts are configured short so the 408 and idle
cases happen, and the bounds on memory and descriptors are generous (the server this replaced kept
one SQLite connection per client connection: 10,000 connections took it from 146 MB to 5.7 GB).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import pytest

from feature_pipelines import Entity, Feature, Rolling, Source
from feature_pipelines.orchestration.publish import publish_partitions
from feature_pipelines.profiles import load_profile
from feature_pipelines.store import LocalStore
from feature_pipelines_tests import load_client
from feature_pipelines_tests.servers import (
    free_port,
    redis_process,
    start_redis,
    wait_for,
)

CUSTOMERS = 5_000
FEATURES_SOURCE = '''
from feature_pipelines import Entity, Feature, FeatureService, Rolling, Source

customer = Entity("customer", join_key="customer_id")
spend = Feature(name="spend", entities=[customer], source=Source("unused.parquet", timestamp="ts"), start="2024-01-01",
                metrics=[Rolling(["1d"], {"amount": ["sum", "count"]})], online=True)
model = FeatureService("model", [spend])
'''


def _spend() -> Feature:
    return Feature(name="spend", entities=[Entity("customer", join_key="customer_id")], source=Source("unused.parquet", timestamp="ts"),
                   start="2024-01-01", metrics=[Rolling(["1d"], {"amount": ["sum", "count"]})], online=True)


def _env(root: Path) -> dict:
    return {**os.environ, "FEATURE_PIPELINES_PROJECT_DIR": str(root), "FEATURE_PIPELINES_ENV_DIR": str(root / "env"),
            "FEATURE_PIPELINES_PROFILE": "load"}


def make_project(root: Path, online_yaml: str) -> Path:
    """A project with one online feature `spend` (5,000 customers c0000..c4999) built offline and published to `online_yaml`."""
    (root / "loadfeatures").mkdir(parents=True)
    (root / "loadfeatures" / "__init__.py").write_text(FEATURES_SOURCE)
    (root / "pyproject.toml").write_text('[project]\nname = "loadproject"\n\n[tool.feature_pipelines]\npackage = "loadfeatures"\n')
    (root / "env").mkdir()
    (root / "env" / "load.yaml").write_text(f"offline_store:\n  kind: local\n  path: ./store\nonline_store:\n{online_yaml}")
    spend = _spend()
    rng = np.random.default_rng(7)
    frame = pl.DataFrame({"customer_id": [f"c{i:04d}" for i in range(CUSTOMERS)],
                          "feature_timestamp": [datetime(2024, 1, 2, tzinfo=UTC)] * CUSTOMERS,
                          "amount_sum_1d": rng.random(CUSTOMERS) * 100, "amount_count_1d": rng.integers(0, 9, CUSTOMERS)})
    LocalStore(root / "store").write_partition("spend", "2024-01-01", frame, keys=["customer_id"], timestamp="feature_timestamp",
                                               config_hash=spend.config_hash)
    publish(root)
    return root


def publish(root: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _env(root).items():
            if name.startswith("FEATURE_PIPELINES_"):
                mp.setenv(name, value)
        profile = load_profile("load")
        result = publish_partitions(_spend(), None, None, profile.offline_store(), profile.online)
    assert result.rows == CUSTOMERS


@dataclass
class Served:
    process: subprocess.Popen
    port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def tree(self) -> list[psutil.Process]:
        parent = psutil.Process(self.process.pid)
        return [parent, *parent.children(recursive=True)]

    def fds(self) -> int:
        return sum(p.num_fds() for p in self.tree())

    def rss_mb(self) -> float:
        return sum(p.memory_info().rss for p in self.tree()) / 2**20

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextmanager
def serving(root: Path, *options: str, scheme: str = "http", ssl_context=None):
    """`feature-pipelines serve` on a free port in `root`, until the block ends (then SIGTERM, and it must exit 0)."""
    port = free_port()
    log = root / f"serve-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "feature_pipelines.cli", "serve", "--port", str(port), *options],
                                   cwd=root, env=_env(root), stdout=out, stderr=subprocess.STDOUT)
    served = Served(process, port, log)
    try:
        wait_for(lambda: get(f"{scheme}://127.0.0.1:{port}/health", ssl_context)[0] == 200, what="feature-pipelines serve answering",
                 timeout=90, alive=lambda: process.poll() is None, detail=served.log_tail)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise AssertionError(f"serve did not exit within 60 s of SIGTERM\n{served.log_tail()}") from None
            assert code == 0, f"serve exited {code} after SIGTERM\n{served.log_tail()}"


def get(url: str, ssl_context=None) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=15, context=ssl_context) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as err:
        body, status = err.read().decode(), err.code
    return status, (json.loads(body) if body.startswith("{") else body)


def raw(port: int, data: bytes, *, wait_close: bool = False) -> tuple[int, dict, bytes]:
    """Send raw bytes on a new connection; the status, headers and body of the answer (status 0: closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return 0, {}, buf
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        want = int(headers.get("content-length", 0))
        while len(body) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        if wait_close:
            assert sock.recv(1) == b"", "the server should close the connection after this answer"
        return int(lines[0].split()[1]), headers, body


def post(port: int, body: bytes, path: str = "/online-features", extra: str = "") -> tuple[int, dict, bytes]:
    return raw(port, f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)


def lookup_body(ids: list[str]) -> bytes:
    return json.dumps({"features": ["spend"], "entities": [{"customer_id": i} for i in ids]}).encode()


def bodies(n: int, batch: int = 1) -> list[bytes]:
    rng = np.random.default_rng(n)
    return [lookup_body([f"c{x:04d}" for x in rng.integers(0, CUSTOMERS, batch)]) for _ in range(n)]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? ([^ ]+)$", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(3) or "").split(","))) == (want if want else ""):
            return float(m.group(4))
    return 0.0


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url():
    with redis_process() as server:
        yield server.url


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def store_project(request, tmp_path_factory) -> tuple[str, Path, str | None]:
    kind = request.param
    root = tmp_path_factory.mktemp(f"serve_{kind}")
    if kind == "sqlite":
        return kind, make_project(root, "  kind: sqlite\n  path: ./online.sqlite\n"), None
    url = request.getfixturevalue("redis_url")
    return kind, make_project(root, f"  kind: redis\n  url: {url}\n  key_prefix: load\n"), url


@pytest.fixture(scope="module")
def sqlite_project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("serve_sqlite_small"), "  kind: sqlite\n  path: ./online.sqlite\n")


# ---- load -----------------------------------------------------------------------------------

WORKERS, THREADS = 2, 4


def test_thousands_of_connections_with_bounded_store_connections_fds_and_memory(store_project) -> None:
    kind, root, redis_url = store_project
    # A generous store timeout: 1,200 requests arriving at once queue for 8 store threads, and this is no test of shedding.
    with serving(root, "--workers", str(WORKERS), "--threads", str(THREADS), "--store-timeout", "60") as served:
        host, port = "127.0.0.1", served.port
        warm = load_client.keep_alive(host, port, bodies(200, 5), 8, per_connection=50)
        warm_churn = load_client.churn(host, port, bodies(200), 8, total=400)
        assert warm.errors == warm_churn.errors == 0, warm.samples + warm_churn.samples
        fds_start, rss_start = served.fds(), served.rss_mb()

        churned = load_client.churn(host, port, bodies(500), 32, total=2_000)  # a new connection per request
        assert churned.errors == 0 and churned.requests == 2_000, churned.samples
        kept = load_client.keep_alive(host, port, bodies(500), 1_200, per_connection=3)  # 1,200 connections open at once
        assert kept.errors == 0 and kept.connections == 1_200 and kept.requests == 3_600, kept.samples
        answer = json.loads(post(port, lookup_body(["c0042", "nobody"]))[2])["rows"]
        assert answer[0]["customer_id"] == "c0042" and answer[0]["spend__amount_sum_1d"] is not None
        assert answer[1]["spend__amount_sum_1d"] is None

        # Store connections are per worker thread, never per client connection.
        bound = WORKERS * (2 * THREADS + 2)
        if kind == "redis":
            import redis

            client = redis.Redis.from_url(redis_url)
            clients = client.client_list()  # this one included
            client.close()
            assert len(clients) <= bound + 1, f"{len(clients)} Redis connections for {WORKERS} workers x {THREADS} threads"
        else:
            sqlite_files = [f for p in served.tree() for f in p.open_files() if "online.sqlite" in f.path]
            assert len(sqlite_files) <= 2 * WORKERS * (THREADS + 1), sqlite_files

        # Every client connection is gone again: descriptors back near the start, memory flat (generous bounds).
        wait_for(lambda: served.fds() <= fds_start + 40, what=f"server fds back near {fds_start}", timeout=60,
                 detail=lambda: f"fds now {served.fds()}")
        fds_end = served.fds()
        rss_end = served.rss_mb()
        assert fds_end <= fds_start + 40
        assert rss_end <= rss_start + 250, f"RSS grew from {rss_start:.0f} MB to {rss_end:.0f} MB over 3,200 client connections"


# ---- malformed requests ---------------------------------------------------------------------


def test_every_malformed_request_gets_a_json_4xx(sqlite_project: Path) -> None:
    with serving(sqlite_project, "--max-batch", "50", "--max-body", "300000", "--request-timeout", "1", "--keep-alive-timeout", "1") as served:
        port = served.port

        def error(status: int, answer: tuple[int, dict, bytes], *words: str) -> dict:
            got, headers, body = answer
            assert got == status, (got, body[:300])
            assert headers.get("content-type") == "application/json", headers
            doc = json.loads(body)
            assert set(doc) == {"error"} and all(w in doc["error"] for w in words), doc
            return headers

        def entities(*values) -> bytes:
            return ('{"features": ["spend"], "entities": [' + ", ".join(f'{{"customer_id": {v}}}' for v in values) + "]}").encode()

        # HTTP framing the parser refuses: JSON 400, connection closed.
        error(400, raw(port, b"POST /online-features HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n{}", wait_close=True), "Content-Length")
        error(400, raw(port, b"GARBAGE\x01 / HTTP/1.1\r\n\r\n", wait_close=True), "invalid HTTP request")
        error(431, raw(port, b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", wait_close=True), "byte limit")
        # Bodies.
        error(400, post(port, b""), "empty body")
        error(400, post(port, b"{not json"), "not valid JSON")
        error(400, post(port, b"[" * 100_000 + b"]" * 100_000), "nested too deeply")
        error(400, post(port, b'{"features": ' * 10_000), "not valid JSON")
        error(400, post(port, b'["features", "entities"]'), "JSON object")
        error(400, post(port, b'{"features": [], "entities": [{"customer_id": "c1"}]}'), "features")
        error(400, post(port, b'{"features": ["spend"], "entities": {"customer_id": "c1"}}'), "entities")
        error(400, post(port, b'{"features": ["spend"], "entities": [{}]}'), "empty object")
        # Entity values: null, list, object, NaN, Infinity, a float join key, mixed types, missing keys, > 64-bit.
        error(400, post(port, entities("null")), "null")
        error(400, post(port, entities('["c1"]')), "list")
        error(400, post(port, entities('{"a": 1}')), "object")
        error(400, post(port, entities("NaN")), "NaN")
        error(400, post(port, entities("-Infinity")), "Infinity")
        error(400, post(port, entities("1.5")), "join key")
        error(400, post(port, entities('"c1"', "7")), "share one type")
        error(400, post(port, entities(str(2**70))), "64 bits")
        error(400, post(port, b'{"features": ["spend"], "entities": [{"customer_id": "c1"}, {"client": "c2"}]}'), "same keys")
        error(400, post(port, b'{"features": ["spend"], "entities": [{"client": "c2"}]}'), "customer_id")
        # Unknown feature or path; wrong method (with Allow).
        error(404, post(port, b'{"features": ["nope"], "entities": [{"customer_id": "c1"}]}'), "nope")
        error(404, raw(port, b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n"), "/nowhere")
        error(404, post(port, b"{}", path="/nowhere"))
        assert error(405, raw(port, b"PUT /online-features HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"), "PUT")["allow"] == "POST"
        assert error(405, raw(port, b"DELETE /health HTTP/1.1\r\nHost: t\r\n\r\n"), "DELETE")["allow"] == "GET, HEAD"
        error(405, raw(port, b"GET /online-features HTTP/1.1\r\nHost: t\r\n\r\n"), "use POST")
        # Too many entities; too large a body (announced, or streamed in chunks): 413.
        error(413, post(port, lookup_body([f"c{i:04d}" for i in range(51)])), "limit is 50")
        error(413, raw(port, b"POST /online-features HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\n", wait_close=True), "300000 byte limit")
        chunk = b"x" * 300_001
        error(413, raw(port, b"POST /online-features HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                             + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n"), "byte limit")
        # A request that never completes: 408 after --request-timeout; an idle connection is closed after --keep-alive-timeout.
        error(408, raw(port, b"POST /online-features HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{", wait_close=True), "not received")
        error(408, raw(port, b"GET /health HTTP/1.1\r\nHost: t\r\n", wait_close=True), "not received")
        assert raw(port, b"")[0] == 0  # idle: closed without an answer

        # The server is unharmed: the same connection-per-request answers still work, keep-alive too.
        status, _, body = post(port, lookup_body(["c0001", "c0002"]))
        assert status == 200 and len(json.loads(body)["rows"]) == 2
        assert load_client.keep_alive("127.0.0.1", port, bodies(20), 4, per_connection=20).errors == 0
        status, health = get(served.url("/health"))
        assert status == 200 and health["status"] == "ok" and health["online_store"].startswith("sqlite:")
        status, ready = get(served.url("/ready"))
        assert status == 200 and ready["status"] == "ready"
        status, listing = get(served.url("/features"))
        assert status == 200 and listing == {"features": [{"name": "spend", "entities": ["customer"], "join_keys": ["customer_id"],
                                                           "columns": ["amount_sum_1d", "amount_count_1d"], "ttl_seconds": None}],
                                             "services": ["model"]}
        status, spec = get(served.url("/openapi.json"))
        assert status == 200 and spec["openapi"].startswith("3.") and {"/health", "/ready", "/features", "/online-features", "/metrics"} <= set(spec["paths"])
        assert spec["components"]["schemas"]["LookupRequest"]["properties"]["entities"]["maxItems"] == 50
        # A feature service resolves as before.
        status, _, body = post(port, b'{"features": ["model"], "entities": [{"customer_id": "c0003"}]}')
        assert status == 200 and "spend__amount_count_1d" in json.loads(body)["rows"][0]

        status, text = get(served.url("/metrics"))
        assert status == 200
        assert metric(text, "feature_pipelines_http_requests_total", method="POST", path="/online-features", status="400") >= 15
        assert metric(text, "feature_pipelines_http_requests_total", method="POST", path="/online-features", status="200") >= 82
        assert metric(text, "feature_pipelines_http_requests_total", method="PUT", path="/online-features", status="405") == 1
        assert metric(text, "feature_pipelines_http_requests_total", method="POST", path="/online-features", status="413") == 3
        assert metric(text, "feature_pipelines_http_requests_total", method="GET", path="other", status="404") == 1
        assert metric(text, "feature_pipelines_http_requests_total", method="other", path="other", status="408") == 2
        assert metric(text, "feature_pipelines_http_request_duration_seconds_count", path="/online-features") >= 100
        assert metric(text, "feature_pipelines_online_batch_size_count") >= 82


# ---- readiness, metrics across workers, shutdown, TLS -----------------------------------------


def test_ready_follows_redis_and_metrics_count_store_errors(tmp_path: Path) -> None:
    with redis_process() as redis_server:
        root = make_project(tmp_path / "p", f"  kind: redis\n  url: {redis_server.url}\n  key_prefix: ready\n")
        with serving(root, "--workers", "2", "--store-timeout", "3") as served:
            assert get(served.url("/ready")) == (200, {"status": "ready", "online_store": f"redis://127.0.0.1:{redis_server.port}/0 (prefix ready)"})
            assert post(served.port, lookup_body(["c0001"]))[0] == 200

            redis_server.stop()
            for _ in range(4):  # whichever worker answers: both say so
                status, answer = get(served.url("/ready"))
                assert status == 503 and "unreachable" in answer["error"] and answer["online_store"].startswith("redis://"), answer
            status, health = get(served.url("/health"))
            assert status == 200 and health["status"] == "ok"  # liveness does not depend on the store
            status, headers, body = post(served.port, lookup_body(["c0001"]))
            assert status == 503 and headers["content-type"] == "application/json" and "unreachable" in json.loads(body)["error"]

            restarted = start_redis(port=redis_server.port)
            try:
                wait_for(lambda: get(served.url("/ready"))[0] == 200, what="/ready after Redis is back", timeout=60)
                publish(root)  # the restarted Redis is empty
                wait_for(lambda: post(served.port, lookup_body(["c0001"]))[0] == 200, what="lookups after Redis is back", timeout=60)
                status, text = get(served.url("/metrics"))  # summed over both workers
                assert metric(text, "feature_pipelines_online_store_errors_total", operation="ready", kind="error") >= 4
                assert metric(text, "feature_pipelines_online_store_errors_total", operation="read", kind="error") >= 1
                assert metric(text, "feature_pipelines_http_requests_total", method="GET", path="/ready", status="503") >= 4
                assert metric(text, "feature_pipelines_http_requests_total", method="POST", path="/online-features", status="200") >= 2
            finally:
                restarted.stop()
                shutil.rmtree(restarted.dir, ignore_errors=True)


def test_a_hung_store_answers_503_and_the_server_stays_up(tmp_path: Path) -> None:
    """Redis frozen (SIGSTOP): lookups answer 503 after --store-timeout, requests past --max-in-flight 503 at once,
    /health still answers (the event loop never waits on the store); after SIGCONT lookups succeed again."""
    import threading

    with redis_process() as redis_server:
        root = make_project(tmp_path / "p", f"  kind: redis\n  url: {redis_server.url}\n  key_prefix: hung\n")
        with serving(root, "--threads", "1", "--store-timeout", "2", "--max-in-flight", "1") as served:
            assert post(served.port, lookup_body(["c0001"]))[0] == 200
            os.kill(redis_server.pid, signal.SIGSTOP)
            try:
                first: list = []
                waiting = threading.Thread(target=lambda: first.append(post(served.port, lookup_body(["c0002"]))))
                waiting.start()

                def busy():
                    status, _, body = post(served.port, lookup_body(["c0003"]))
                    return status == 503 and "server busy" in json.loads(body)["error"]

                wait_for(busy, what="a second lookup refused while one waits on the frozen store", timeout=60)
                assert get(served.url("/health"))[0] == 200
                waiting.join(timeout=60)
                status, headers, body = first[0]
                assert status == 503 and headers["content-type"] == "application/json", body
                error = json.loads(body)["error"]  # it timed out waiting on Redis, or a probe got in first and it was refused
                assert ("no answer from the online store" in error and "within 2 s" in error) or "server busy" in error, error
            finally:
                os.kill(redis_server.pid, signal.SIGCONT)
            wait_for(lambda: post(served.port, lookup_body(["c0004"]))[0] == 200, what="lookups after Redis resumes", timeout=60)
            status, text = get(served.url("/metrics"))
            assert metric(text, "feature_pipelines_online_store_errors_total", operation="read", kind="timeout") >= 1


def test_sigterm_shuts_down_workers_cleanly(sqlite_project: Path) -> None:
    with serving(sqlite_project, "--workers", "2") as served:
        assert load_client.keep_alive("127.0.0.1", served.port, bodies(10), 4, per_connection=10).errors == 0
        idle = socket.create_connection(("127.0.0.1", served.port))  # an open keep-alive connection does not hold shutdown up
        workers = served.tree()[1:]
        assert workers
        metrics_dirs = {p.environ().get("PROMETHEUS_MULTIPROC_DIR") for p in workers} - {None}
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=60) == 0, served.log_tail()
        idle.close()
        def gone(proc: psutil.Process) -> bool:
            try:
                return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        # Workers are joined before the parent exits; multiprocessing's resource tracker follows it within moments.
        wait_for(lambda: all(map(gone, workers)), what="serve's child processes gone", timeout=30,
                 detail=lambda: str([(p.pid, p.cmdline()) for p in workers if not gone(p)]))
        assert metrics_dirs and not any(Path(d).exists() for d in metrics_dirs)  # the multiprocess metrics folder is removed
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", served.port), timeout=5).close()


def test_tls(sqlite_project: Path, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl binary to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.create_default_context(cafile=str(cert))
    with serving(sqlite_project, "--tls-cert", str(cert), "--tls-key", str(key), scheme="https", ssl_context=context) as served:
        assert get(f"https://127.0.0.1:{served.port}/ready", context)[0] == 200
        result = load_client.keep_alive("127.0.0.1", served.port, bodies(50), 4, per_connection=25, ssl=context)
        assert result.errors == 0 and result.requests == 100, result.samples
        with pytest.raises(OSError):  # plain HTTP on the TLS port gets no answer
            urllib.request.urlopen(served.url("/health"), timeout=10).read()
