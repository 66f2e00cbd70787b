"""The OpenAPI 3.1 description of the serving endpoints, served at GET /openapi.json."""

from __future__ import annotations

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict:
    what = {400: "malformed request: not JSON, nested too deeply, wrong shape, null/list/object/NaN values, a float join key",
            404: "unknown feature, service or path", 405: "method not allowed on this path (see the Allow header)",
            408: "the request was not received within the request timeout",
            413: "too many entities, or a body over the size limit", 431: "request line and headers over the size limit",
            500: "unexpected server error", 503: "the online store is unreachable, failed, or did not answer in time"}
    return {str(s): _json(_ERROR, what[s]) for s in statuses}


def openapi_spec(max_batch: int, max_body: int, version: str = "0.1.0") -> dict:
    """The document; limits are this server's."""
    scalar = {"type": ["string", "integer", "number", "boolean"]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "feature_pipelines online features", "version": version,
                 "description": "Newest published feature values per entity, read from the online store. "
                                "Every error answers {\"error\": \"...\"}."},
        "paths": {
            "/health": {"get": {"summary": "Liveness: the process answers (the store is not touched)", "operationId": "health",
                                "responses": {"200": _json({"$ref": "#/components/schemas/Health"}, "alive")}}},
            "/ready": {"get": {"summary": "Readiness: the online store answers a read", "operationId": "ready",
                               "responses": {"200": _json({"$ref": "#/components/schemas/Health"}, "ready to serve"),
                                             **_errors(503)}}},
            "/features": {"get": {"summary": "The online features and feature services", "operationId": "listFeatures",
                                  "responses": {"200": _json({"$ref": "#/components/schemas/FeatureList"}, "the features")}}},
            "/online-features": {"post": {
                "summary": "Newest feature values for a batch of entities, in request order", "operationId": "getOnlineFeatures",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/LookupRequest"}}},
                                "description": f"at most {max_batch} entities and {max_body} bytes"},
                "responses": {"200": _json({"$ref": "#/components/schemas/LookupResponse"},
                                           "one row per entity: its input values, then <feature>__<column> (null when unknown or expired)"),
                              **_errors(400, 404, 408, 413, 431, 500, 503)}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text exposition format)", "operationId": "metrics",
                                 "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                      "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "Health": {"type": "object", "properties": {"status": {"type": "string"}, "online_store": {"type": "string"}}},
            "FeatureList": {"type": "object", "properties": {
                "features": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "entities": {"type": "array", "items": {"type": "string"}},
                    "join_keys": {"type": "array", "items": {"type": "string"}}, "columns": {"type": "array", "items": {"type": "string"}},
                    "ttl_seconds": {"type": ["number", "null"]}}}},
                "services": {"type": "array", "items": {"type": "string"}}}},
            "LookupRequest": {"type": "object", "required": ["features", "entities"], "properties": {
                "features": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1},
                             "description": "feature names, 'name:column', or feature service names",
                             "examples": [["customer_spend", "merchant_spend:amount_count_30d"]]},
                "entities": {"type": "array", "minItems": 1, "maxItems": max_batch,
                             "items": {"type": "object", "minProperties": 1, "additionalProperties": scalar},
                             "description": "one object per entity with the same keys: join keys (strings, integers or booleans) "
                                            "or the PII columns an entity derives its key from (dates as ISO text)",
                             "examples": [[{"customer_id": "c1"}, {"customer_id": "c2"}]]}}},
            "LookupResponse": {"type": "object", "required": ["rows"], "properties": {
                "rows": {"type": "array", "items": {"type": "object"}}}},
        }},
    }


__all__ = ["openapi_spec"]
