"""Online feature serving over HTTP: `feature-pipelines serve`, or embedded (`make_server`, or `ServingApp` under any ASGI server).

    app.py       the ASGI app: routes, status codes, one FeatureStore and a fixed thread pool per process
    lookup.py    request checks, the store read, the /ready probe (blocking; run on the pool)
    protocol.py  uvicorn's HTTP protocol with JSON parser errors, a header limit and a request timeout
    server.py    uvicorn with workers, backlog, timeouts, TLS and clean SIGTERM; `make_server`
    metrics.py   Prometheus metrics (multiprocess-aware)
    openapi.py   the OpenAPI description at /openapi.json
"""

from feature_pipelines.serving.app import MAX_BATCH, ServingApp
from feature_pipelines.serving.server import (
    EmbeddedServer,
    ServeOptions,
    make_server,
    serve,
)

__all__ = ["MAX_BATCH", "EmbeddedServer", "ServeOptions", "ServingApp", "make_server", "serve"]
