"""The router's API as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

Request bodies are the JSON Schemas of the very pydantic models that validate them
(``hotcold.wire.schema``), so the description cannot drift from what the router accepts; the
fuzz tests (schemathesis) generate requests from it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aiohttp import web

from hotcold.wire.schema import ChatCompletionRequest, CompletionRequest

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": "string"},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "an error in the OpenAI shape",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _json(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {}}}}


def _inference(summary: str, model: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [
                {
                    "name": "X-Tenant",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
                {
                    "name": "Cache-Control",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}},
                    "application/msgpack": {"schema": {"$ref": f"#/components/schemas/{model}"}},
                },
            },
            "responses": {
                "200": {
                    "description": "the completion (text/event-stream when stream is true);"
                    " headers X-Route, X-Cache, X-Served-By, X-Request-Id",
                    "content": {"application/json": {"schema": {}}, "text/event-stream": {}},
                },
                **_errors(400, 401, 408, 413, 415, 422, 429, 502, 503, 504),
            },
        }
    }


@cache
def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": _ERROR}
    for model in (ChatCompletionRequest, CompletionRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    admin: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hotcold router",
            "version": "1",
            "description": "OpenAI-compatible edge router: hot requests from the edge"
            " (cache, 4-bit model), cold ones to the cloud pool.",
        },
        "paths": {
            "/v1/chat/completions": _inference("chat completion", "ChatCompletionRequest"),
            "/v1/completions": _inference("text completion", "CompletionRequest"),
            "/v1/models": {"get": {"responses": {"200": _json("models"), **_errors(503)}}},
            "/healthz": {"get": {"responses": {"200": _json("alive")}}},
            "/readyz": {"get": {"responses": {"200": _json("ready"), "503": _json("not")}}},
            "/admin/policy": {
                "get": {"security": admin, "responses": {"200": _json("policy"), **_errors(401)}},
                "put": {
                    "security": admin,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "description": "the document GET returns, policy.values"
                                    " edited (a replacement), or the envelope"
                                    " {changes: <merge patch>, by, reason}",
                                    "type": "object",
                                    "properties": {
                                        "policy": {"type": "object"},
                                        "changes": {"type": "object"},
                                        "by": {"type": "string"},
                                        "reason": {"type": "string"},
                                        "expected_version": {"type": "integer"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json("the new policy"),
                        **_errors(400, 401, 409, 415, 422, 503),
                    },
                },
                "patch": {
                    "security": admin,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/merge-patch+json": {
                                "schema": {
                                    "description": "a JSON merge patch of policy.values",
                                    "type": "object",
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json("the new policy"),
                        **_errors(400, 401, 409, 415, 422, 503),
                    },
                },
            },
            "/admin/fleet": {"get": {"security": admin, "responses": {"200": _json("fleet")}}},
            **_key_paths(admin),
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


def _key_paths(admin: list[dict[str, list[str]]]) -> dict[str, Any]:
    """The live API keys and tenant limits (router/admin_tenants.py)."""

    def body(description: str, properties: dict[str, Any]) -> dict[str, Any]:
        schema = {"type": "object", "description": description, "properties": properties}
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    number, integer, text = {"type": "number"}, {"type": "integer"}, {"type": "string"}
    limits = {
        "requests_per_s": number,
        "burst": integer,
        "tokens_per_min": integer,
        "edge_weight": number,
        "edge_share": number,
    }
    return {
        "/admin/keys": {
            "get": {"security": admin, "responses": {"200": _json("keys, never a secret")}},
            "post": {
                "security": admin,
                "requestBody": body(
                    "a key for a tenant", {"tenant": {"type": "string"}, "name": {"type": "string"}}
                ),
                "responses": {"201": _json("the key, shown once"), **_errors(401, 422, 503)},
            },
        },
        "/admin/keys/{id}": {
            "delete": {
                "security": admin,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": text}],
                "responses": {"200": _json("revoked"), **_errors(401, 404, 503)},
            }
        },
        "/admin/tenants": {"get": {"security": admin, "responses": {"200": _json("limits")}}},
        "/admin/tenants/{tenant}/limits": {
            "put": {
                "security": admin,
                "parameters": [{"name": "tenant", "in": "path", "required": True, "schema": text}],
                "requestBody": body("the tenant's limits, fleet-wide", limits),
                "responses": {"200": _json("limits"), **_errors(401, 422, 503)},
            },
            "delete": {
                "security": admin,
                "parameters": [{"name": "tenant", "in": "path", "required": True, "schema": text}],
                "responses": {"200": _json("limits"), **_errors(401, 503)},
            },
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
