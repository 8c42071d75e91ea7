"""The OpenAPI 3.1 document of both APIs (``/openapi.json``) and a page to read it (``/docs``).

Schemas come from the pydantic models in ``schemas.py``, so the document and
the validation that answers 400 cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from joules.meter import HEADER_CO2, HEADER_ENERGY, HEADER_METHOD, HEADER_USD
from joules.serve.online import schemas as s

_MODELS: list[type[BaseModel]] = [
    s.InferenceRequest,
    s.InferenceResponse,
    s.ModelMetadata,
    s.ServerMetadata,
    s.RepositoryIndexRequest,
    s.RepositoryModel,
    s.RepositoryLoadRequest,
    s.PredictRequest,
    s.PredictResponse,
    s.ModelStatus,
    s.ErrorResponse,
]
_REF = "#/components/schemas/{model}"
# Every answered inference request carries its cost (docs/cost.md).
_COST_HEADERS = {
    HEADER_ENERGY: {
        "description": "joules: this request's share of the model calls that served it (0: answered from the cache)",
        "schema": {"type": "number", "minimum": 0},
    },
    HEADER_USD: {
        "description": "US dollars: the instance's price per hour spread over the CPU-seconds it buys",
        "schema": {"type": "number", "minimum": 0},
    },
    HEADER_CO2: {
        "description": "grams CO2e: the energy times the grid's carbon intensity (the region setting)",
        "schema": {"type": "number", "minimum": 0},
    },
    HEADER_METHOD: {
        "description": "how the energy was obtained",
        "schema": {"type": "string", "enum": ["measured", "modelled"]},
    },
}

DOCS_HTML = """<!doctype html>
<html><head><title>joules API</title><meta charset="utf-8">
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
<noscript>The API is described at <a href="/openapi.json">/openapi.json</a>.</noscript>
</body></html>
"""


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel] | dict[str, Any], description: str) -> dict[str, Any]:
    schema = _ref(model) if isinstance(model, type) else model
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _priced(response: dict[str, Any]) -> dict[str, Any]:
    return {**response, "headers": _COST_HEADERS}


_ERRORS = {
    "400": _json(s.ErrorResponse, "malformed request: the message names the field"),
    "401": _json(s.ErrorResponse, "missing or wrong API key"),
    "404": _json(s.ErrorResponse, "no such model or version is served"),
    "413": _json(s.ErrorResponse, "body over --max-body-mb"),
    "415": _json(s.ErrorResponse, "unsupported Content-Encoding"),
    "503": _json(s.ErrorResponse, "queue full or model not ready; see Retry-After"),
    "504": _json(s.ErrorResponse, "not answered within the request's deadline"),
}
_MODEL = {
    "name": "model",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
}
_VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^[1-9][0-9]{0,8}$"},
}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    tag: str,
    params: list[dict[str, Any]] | None = None,
    body: type[BaseModel] | None = None,
    body_schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {"200": ok, **_ERRORS}}
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    elif body_schema is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_schema}}}
    return op


def openapi_document(version: str, api_key: bool) -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in _MODELS], ref_template=_REF)
    simple_ok = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
    v2, v1, ops = "Open Inference Protocol V2", "simple API", "operations"
    gen = "text generation"
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": _op("the server is running", simple_ok, tag=v2)},
        "/v2/health/ready": {"get": _op("every served model is loaded (503 until then)", simple_ok, tag=v2)},
        "/v2": {"get": _op("server metadata", _json(s.ServerMetadata, "server metadata"), tag=v2)},
        "/v2/repository/index": {
            "post": _op(
                "models known to the server and their state",
                _json({"type": "array", "items": _ref(s.RepositoryModel)}, "models"),
                body=s.RepositoryIndexRequest,
                tag=v2,
            )
        },
        "/v1/models": {"get": _op("served models", simple_ok, tag=v1)},
        "/v1/models/{model}": {"get": _op("one served model", _json(s.ModelStatus, "status"), params=[_MODEL], tag=v1)},
        "/v1/models/{model}:predict": {
            "post": _op(
                "predict label, probabilities and action for each instance",
                _priced(_json(s.PredictResponse, "one prediction per instance, in order, and the request's cost")),
                params=[_MODEL],
                body=s.PredictRequest,
                tag=v1,
            )
        },
        # Text generation (docs/generate.md): OpenAI's shapes, and errors as {"error": {message, type, param, code}}.
        "/v1/chat/completions": {
            "post": _op(
                "OpenAI chat completions of a text-generation model (stream: true for Server-Sent Events)",
                _priced(simple_ok),
                body_schema={"type": "object"},
                tag=gen,
            )
        },
        "/v1/completions": {
            "post": _op(
                "OpenAI completions of a text-generation model (stream: true for Server-Sent Events)",
                _priced(simple_ok),
                body_schema={"type": "object"},
                tag=gen,
            )
        },
        "/v2/models/{model}/generate": {
            "post": _op(
                "OIP generate extension: text_input and parameters in, text_output out",
                _priced(simple_ok),
                params=[_MODEL],
                body_schema={"type": "object"},
                tag=gen,
            )
        },
        "/v2/models/{model}/generate_stream": {
            "post": _op(
                "OIP generate extension as Server-Sent Events",
                simple_ok,
                params=[_MODEL],
                body_schema={"type": "object"},
                tag=gen,
            )
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": [ops],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    for prefix, params in (
        ("/v2/models/{model}", [_MODEL]),
        ("/v2/models/{model}/versions/{version}", [_MODEL, _VERSION]),
    ):
        paths[prefix] = {"get": _op("model metadata", _json(s.ModelMetadata, "model metadata"), params=params, tag=v2)}
        paths[prefix + "/ready"] = {"get": _op("the model is loaded", simple_ok, params=params, tag=v2)}
        paths[prefix + "/config"] = {"get": _op("Triton model configuration", simple_ok, params=params, tag=v2)}
        paths[prefix + "/infer"] = {
            "post": _op(
                "inference; also accepts Triton's binary tensor data (header Inference-Header-Content-Length)",
                _priced(_json(s.InferenceResponse, "outputs probabilities, label, action; the cost in parameters")),
                params=params,
                body=s.InferenceRequest,
                tag=v2,
            )
        }
    for verb in ("load", "unload"):
        paths[f"/v2/repository/models/{{model}}/{verb}"] = {
            "post": _op(
                f"{verb} the model's production version (with --model-control explicit; 403 otherwise)",
                simple_ok,
                params=[_MODEL],
                body=s.RepositoryLoadRequest,
                tag=v2,
            )
        }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "joules online inference",
            "version": version,
            "description": "Open Inference Protocol V2 (KServe, Triton: tritonclient works against it, JSON or "
            'binary tensors) and a simple JSON API. Errors are {"error": message}. Every answered inference '
            "request carries its cost: headers X-Joules-Energy-J, X-Joules-Cost-USD, X-Joules-CO2-g and "
            "X-Joules-Energy-Method, the same figures in a V2 response's parameters and a /v1 response's cost.",
        },
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }
    if api_key:
        doc["components"]["securitySchemes"] = {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "bearer": {"type": "http", "scheme": "bearer"},
        }
        doc["security"] = [{"apiKey": []}, {"bearer": []}]
    return doc
