"""OpenAPI additions that APIFlask's one-body-per-view `@input` cannot express.

`POST /v1/jobs` takes either JSON or multipart; both bodies are documented here from the
same schemas the view validates with.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec, BasePlugin
from marshmallow import Schema

Body = type[Schema] | dict[str, Any]


def _schema_of(body: Body) -> dict[str, Any]:
    if isinstance(body, dict):
        return body
    return {"$ref": f"#/components/schemas/{body.__name__}"}


class RequestBodiesPlugin(BasePlugin):
    """Documents request bodies with several content types, each from a marshmallow schema."""

    def __init__(self) -> None:
        self._bodies: dict[tuple[str, str], dict[str, Body]] = {}
        self._spec: APISpec | None = None

    def add(self, path: str, method: str, content: dict[str, Body]) -> None:
        """Each media type takes a marshmallow schema, or a plain JSON schema (a raw body)."""
        self._bodies[(path, method.lower())] = content

    def init_spec(self, spec: APISpec) -> None:
        self._spec = spec
        # The marshmallow plugin converts these into components, as for any other schema.
        for content in self._bodies.values():
            for body in content.values():
                if not isinstance(body, dict):
                    spec.components.schema(body.__name__, schema=body)

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **_: Any
    ) -> None:
        for (body_path, method), content in self._bodies.items():
            if path == body_path and operations and method in operations:
                operations[method]["requestBody"] = {
                    "required": True,
                    "content": {
                        media_type: {"schema": _schema_of(body)}
                        for media_type, body in content.items()
                    },
                }
