"""Prometheus metrics of `feature-pipelines serve`, exposed at GET /metrics.

    feature_pipelines_http_requests_total{method, path, status}        counter
    feature_pipelines_http_request_duration_seconds{path}              histogram (request in, answer written)
    feature_pipelines_online_store_errors_total{operation, kind}       counter: operation read|ready, kind error|timeout
    feature_pipelines_online_batch_size                                histogram: entities per POST /online-features

Paths are the served ones or "other", methods the usual ones or "other", so a scanner cannot blow up
the number of series. With several workers `serve` points PROMETHEUS_MULTIPROC_DIR at a fresh
folder before they start (prometheus_client's multiprocess mode): each worker writes its own
files and /metrics, whichever worker answers it, sums them all. With one worker the default
registry is used (and adds the process_* and python_* metrics).
"""

from __future__ import annotations

import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

PATHS = frozenset({"/health", "/ready", "/features", "/online-features", "/metrics", "/openapi.json"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})

REQUESTS = Counter("feature_pipelines_http_requests", "HTTP requests answered, by method, path and status",
                   ["method", "path", "status"])
LATENCY = Histogram("feature_pipelines_http_request_duration_seconds", "Time from the request's headers to the answer written, by path",
                    ["path"], buckets=(0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
STORE_ERRORS = Counter("feature_pipelines_online_store_errors", "Online store failures, by operation (read, ready) and kind (error, timeout)",
                       ["operation", "kind"])
BATCH = Histogram("feature_pipelines_online_batch_size", "Entities per POST /online-features request",
                  buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000))

_requests: dict[tuple[str, str, int], object] = {}
_latency: dict[str, object] = {}


def path_label(path: str) -> str:
    return path if path in PATHS else "other"


def observe(method: str, path: str, status: int, seconds: float | None) -> None:
    """Count one answered request (labels cached: `.labels()` costs more than the increment)."""
    path = path_label(path)
    key = (method, path, status)
    child = _requests.get(key)
    if child is None:
        child = _requests[key] = REQUESTS.labels(method if method in _METHODS else "other", path, str(status))
    child.inc()
    if seconds is not None:
        hist = _latency.get(path)
        if hist is None:
            hist = _latency[path] = LATENCY.labels(path)
        hist.observe(seconds)


def store_error(operation: str, kind: str) -> None:
    STORE_ERRORS.labels(operation, kind).inc()


def batch_size(n: int) -> None:
    BATCH.observe(n)


def exposition() -> bytes:
    """The text exposition: every worker's metrics summed in multiprocess mode, else this process's."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


__all__ = ["CONTENT_TYPE", "MULTIPROC_ENV", "batch_size", "exposition", "observe", "store_error"]
