"""OpenAPI 3.1 generated from the transcoder's bindings and the protos (comments included).

Descriptions come from the proto comments in `flowforge/descriptors.binpb` (a FileDescriptorSet
with source info; the descriptors compiled into the `_pb2` modules carry no comments).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web
from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from edge import jsonmap
from edge.transcoder import SELECT_PARAM, HttpBinding

Schema = dict[str, Any]

PROBLEM_SCHEMA = "Problem"
_F = FieldDescriptor
_SCALARS: Mapping[int, Schema] = {
    _F.TYPE_INT32: {"type": "integer", "format": "int32"},
    _F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _F.TYPE_UINT32: {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    _F.TYPE_FIXED32: {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    _F.TYPE_INT64: {"type": "integer", "format": "int64"},
    _F.TYPE_SINT64: {"type": "integer", "format": "int64"},
    _F.TYPE_SFIXED64: {"type": "integer", "format": "int64"},
    _F.TYPE_UINT64: {"type": "integer", "minimum": 0},
    _F.TYPE_FIXED64: {"type": "integer", "minimum": 0},
    _F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _F.TYPE_FLOAT: {"type": "number", "format": "float"},
    _F.TYPE_BOOL: {"type": "boolean"},
    _F.TYPE_STRING: {"type": "string"},
    _F.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN: Mapping[str, Schema] = {
    jsonmap.TIMESTAMP: {"type": "string", "format": "date-time"},
    jsonmap.DURATION: {"type": "string", "pattern": r"^-?\d+(\.\d+)?s$"},
    jsonmap.FIELD_MASK: {"type": "string", "description": "Comma-separated field paths."},
    jsonmap.STRUCT: {"type": "object", "additionalProperties": True},
    jsonmap.VALUE: {},
    jsonmap.LIST_VALUE: {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
    jsonmap.HTTP_BODY: {"type": "string", "format": "binary"},
}
# Shared error responses: (component name, status, description).
_ERROR_RESPONSES = (
    ("BadRequest", "400", "The request is malformed: bad JSON, an unknown field or parameter."),
    ("Unauthorized", "401", "Credentials are missing or invalid."),
    ("Forbidden", "403", "The credentials lack the scope this operation needs."),
    ("NotFound", "404", "No such resource (or it belongs to another tenant)."),
    ("Conflict", "409", "The resource's state or a unique name forbids the change."),
    ("PreconditionFailed", "412", "`If-Match` does not match the current etag."),
    ("PayloadTooLarge", "413", "The request body is too large."),
    ("UnsupportedMediaType", "415", "The request body has an unsupported content type."),
    ("Unprocessable", "422", "The request is well-formed but semantically invalid."),
    ("TooManyRequests", "429", "A rate limit or quota was hit."),
    ("ServerError", "default", "The server or a backend service failed (5xx)."),
)


# --------------------------------------------------------------------------- comments


def load_comments(data: bytes | None = None) -> dict[str, str]:
    """Leading comments of every proto element by full name (enum values as
    `<enum full name>.<VALUE>`), read from the FileDescriptorSet shipped with the stubs."""
    if data is None:
        data = (resources.files("flowforge") / "descriptors.binpb").read_bytes()
    comments: dict[str, str] = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        names = dict(_element_names(file))
        for location in file.source_code_info.location:
            name = names.get(tuple(location.path))
            text = "\n".join(line.strip() for line in location.leading_comments.strip().splitlines())
            if name is not None and text:
                comments[name] = text
    return comments


def _element_names(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[tuple[int, ...], str]]:
    """(source path, full name) of every element; the numbers are the FileDescriptorProto,
    DescriptorProto, EnumDescriptorProto and ServiceDescriptorProto field numbers."""

    def enum(proto: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str) -> Iterator[Any]:
        full = f"{scope}.{proto.name}"
        yield path, full
        for index, value in enumerate(proto.value):
            yield (*path, 2, index), f"{full}.{value.name}"

    def message(proto: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str) -> Iterator[Any]:
        full = f"{scope}.{proto.name}"
        yield path, full
        for index, field in enumerate(proto.field):
            yield (*path, 2, index), f"{full}.{field.name}"
        for index, nested in enumerate(proto.nested_type):
            yield from message(nested, (*path, 3, index), full)
        for index, nested_enum in enumerate(proto.enum_type):
            yield from enum(nested_enum, (*path, 4, index), full)

    for index, proto in enumerate(file.message_type):
        yield from message(proto, (4, index), file.package)
    for index, enum_proto in enumerate(file.enum_type):
        yield from enum(enum_proto, (5, index), file.package)
    for index, service in enumerate(file.service):
        full = f"{file.package}.{service.name}"
        yield (6, index), full
        for method_index, method in enumerate(service.method):
            yield (6, index, 2, method_index), f"{full}.{method.name}"


def _summary(text: str) -> str:
    first = text.split("\n\n")[0].replace("\n", " ")
    end = first.find(". ")
    return first[: end + 1] if end >= 0 else first


# --------------------------------------------------------------------------- schemas


def _behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _reachable(roots: Sequence[Descriptor]) -> tuple[list[Descriptor], list[EnumDescriptor]]:
    """Our messages and enums reachable from `roots` (well-known and map entry types are
    inlined, not components)."""
    messages: dict[str, Descriptor] = {}
    enums: dict[str, EnumDescriptor] = {}
    pending = list(roots)
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name in messages or descriptor.full_name.startswith("google."):
            continue
        if not descriptor.GetOptions().map_entry:
            messages[descriptor.full_name] = descriptor
        for field in descriptor.fields:
            if field.enum_type is not None:
                enums.setdefault(field.enum_type.full_name, field.enum_type)
            if field.message_type is not None:
                pending.append(field.message_type)
    return sorted(messages.values(), key=lambda d: d.full_name), sorted(enums.values(), key=lambda e: e.full_name)


class _SchemaBuilder:
    """components.schemas: one per message and enum, named by the short name unless two
    packages share it."""

    def __init__(self, messages: Sequence[Descriptor], enums: Sequence[EnumDescriptor], comments: Mapping[str, str]):
        self._comments = comments
        everything: list[Descriptor | EnumDescriptor] = [*messages, *enums]
        short_names = [d.name for d in everything] + [PROBLEM_SCHEMA]
        self.names = {d.full_name: d.name if short_names.count(d.name) == 1 else d.full_name for d in everything}
        self.schemas: dict[str, Schema] = {}
        for message in messages:
            self.schemas[self.names[message.full_name]] = self._message(message)
        for enum in enums:
            self.schemas[self.names[enum.full_name]] = self._enum(enum)

    def ref(self, full_name: str) -> Schema:
        """A reference to the component of a message or enum."""
        return {"$ref": f"#/components/schemas/{self.names[full_name]}"}

    def _described(self, schema: Schema, full_name: str) -> Schema:
        if full_name in self._comments:
            schema["description"] = self._comments[full_name]
        return schema

    def _enum(self, enum: EnumDescriptor) -> Schema:
        lines = []
        for value in enum.values:
            if jsonmap.is_unset_enum_value(value):
                continue
            comment = self._comments.get(f"{enum.full_name}.{value.name}")
            name = jsonmap.enum_value_name(value)
            lines.append(f"- `{name}`: {comment}" if comment else f"- `{name}`")
        schema: Schema = {"type": "string", "enum": jsonmap.public_enum_names(enum)}
        intro = self._comments.get(enum.full_name, "")
        schema["description"] = "\n\n".join(part for part in (intro, "\n".join(lines)) if part)
        return schema

    def _message(self, message: Descriptor) -> Schema:
        schema: Schema = {"type": "object", "properties": {f.name: self.field(f) for f in message.fields}}
        required = [f.name for f in message.fields if field_behavior_pb2.REQUIRED in _behaviors(f)]
        if required:
            schema["required"] = required
        return self._described(schema, message.full_name)

    def single(self, field: FieldDescriptor) -> Schema:
        """The schema of one value of a field (one item of a repeated field)."""
        if field.enum_type is not None:
            return self.ref(field.enum_type.full_name)
        if field.message_type is None:
            return dict(_SCALARS[field.type])
        name = field.message_type.full_name
        if name in jsonmap.WRAPPERS:
            return dict(_SCALARS[field.message_type.fields_by_name["value"].type])
        if name in _WELL_KNOWN:
            return copy.deepcopy(dict(_WELL_KNOWN[name]))
        if name.startswith("google."):
            return {"type": "object"}
        return self.ref(name)

    def field(self, field: FieldDescriptor) -> Schema:
        """The schema of a field with its description and field_behavior annotations."""
        if jsonmap.is_map(field):
            assert field.message_type is not None
            schema: Schema = {
                "type": "object",
                "additionalProperties": self.single(field.message_type.fields_by_name["value"]),
            }
        elif field.is_repeated:
            schema = {"type": "array", "items": self.single(field)}
        else:
            schema = self.single(field)
        behaviors = _behaviors(field)
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in behaviors:
            schema["writeOnly"] = True
        return self._described(schema, field.full_name)


# --------------------------------------------------------------------------- operations


def _query_fields(
    descriptor: Descriptor, prefix: str, excluded: set[str], seen: frozenset[str]
) -> Iterator[tuple[str, FieldDescriptor]]:
    """Every field a query parameter can set, by dotted name (the transcoder's rules)."""
    for field in descriptor.fields:
        name = jsonmap.join_path(prefix, field.name)
        if name in excluded:
            continue
        if jsonmap.is_plain_message(field):
            assert field.message_type is not None
            if field.message_type.full_name not in seen:
                yield from _query_fields(field.message_type, name, excluded, seen | {field.message_type.full_name})
        elif jsonmap.is_text_field(field):
            yield name, field


class _OperationBuilder:
    """One OpenAPI operation per binding, with the transcoder's rules for path, query, header
    and body."""

    def __init__(self, schemas: _SchemaBuilder, comments: Mapping[str, str]) -> None:
        self._schemas = schemas
        self._comments = comments

    def _parameter(self, name: str, where: str, field: FieldDescriptor, *, required: bool = False) -> Schema:
        parameter: Schema = {"name": name, "in": where, "schema": self._schemas.field(field)}
        description = parameter["schema"].pop("description", None)
        for annotation in ("readOnly", "writeOnly"):
            parameter["schema"].pop(annotation, None)
        if description:
            parameter["description"] = description
        if required:
            parameter["required"] = True
        return parameter

    def parameters(self, binding: HttpBinding) -> list[Schema]:
        """Path variables, query parameters (every field path and body leave), bound headers
        and `fields`."""
        request = binding.method.input_type
        parameters = [
            self._parameter(path, "path", chain[-1], required=True) for path, chain in binding.path_fields.items()
        ]
        if binding.body != "*":
            excluded = set(binding.path_fields) | {f.name for f in binding.header_fields.values()} | {binding.body}
            parameters.extend(
                self._parameter(name, "query", field)
                for name, field in _query_fields(request, "", excluded, frozenset({request.full_name}))
            )
        parameters.extend(self._parameter(header, "header", field) for header, field in binding.header_fields.items())
        if binding.selectable is not None:
            parameters.append(
                {
                    "name": SELECT_PARAM,
                    "in": "query",
                    "description": "Comma-separated top-level fields to return (of each item for lists), "
                    "e.g. `id,name`.",
                    "schema": {"type": "string"},
                }
            )
        return parameters

    def request_body(self, binding: HttpBinding) -> Schema | None:
        """The body: the request minus path and header fields (`*`), one field, or raw bytes."""
        if not binding.body:
            return None
        field = binding.body_field
        required = True
        if field is None:
            bound = {chain[0].name for chain in binding.path_fields.values()}
            bound |= {f.name for f in binding.header_fields.values()}
            fields = [f for f in binding.method.input_type.fields if f.name not in bound]
            schema: Schema = {"type": "object", "properties": {f.name: self._schemas.field(f) for f in fields}}
            names = [f.name for f in fields if field_behavior_pb2.REQUIRED in _behaviors(f)]
            if names:
                schema["required"] = names
            required = bool(names)
        elif field.message_type is not None and field.message_type.full_name == jsonmap.HTTP_BODY:
            return {"required": True, "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}
        else:
            schema = self._schemas.field(field)
        content = {"application/json": {"schema": schema}}
        if binding.form_body:
            content["application/x-www-form-urlencoded"] = {"schema": schema}
        return {"required": required, "content": content}

    def responses(self, binding: HttpBinding) -> Schema:
        """The success response (per `response_body` and the success code) and shared errors."""
        success: Schema
        code = binding.success_code
        if code == 204:
            success = {"description": "Done; no content."}
        else:
            field = binding.response_field
            output = binding.method.output_type.full_name
            schema = self._schemas.field(field) if field is not None else self._schemas.ref(output)
            schema.pop("description", None)
            success = {
                "description": self._comments.get(binding.method.output_type.full_name, "Success."),
                "content": {"application/json": {"schema": schema}},
            }
            headers: Schema = {}
            if code == 201:
                headers["Location"] = {"description": "Path of the created resource.", "schema": {"type": "string"}}
            if "etag" in binding.resource_descriptor.fields_by_name and binding.items_field is None:
                headers["ETag"] = {"description": "The resource's etag, for `If-Match`.", "schema": {"type": "string"}}
            if headers:
                success["headers"] = headers
        responses: Schema = {str(code): success}
        wanted = {"400", "404", "409", "422", "429", "default"}
        if not binding.public:
            wanted |= {"401", "403"}
        if "If-Match" in binding.header_fields:
            wanted.add("412")
        if binding.body:
            wanted |= {"413", "415"}
        for name, status, _ in _ERROR_RESPONSES:
            if status in wanted:
                responses[status] = {"$ref": f"#/components/responses/{name}"}
        return responses

    def operation(self, binding: HttpBinding, operation_id: str) -> Schema:
        """The whole operation object."""
        comment = self._comments.get(binding.method.full_name, "")
        description = comment
        if binding.policy is not None and binding.policy.scope:
            description += f"\n\nRequires the `{binding.policy.scope}` scope."
        operation: Schema = {
            "operationId": operation_id,
            "tags": [binding.service.name],
            "summary": _summary(comment) or binding.method.name,
            "description": description.strip(),
            "x-grpc-method": binding.rpc_path,
            "parameters": self.parameters(binding),
        }
        body = self.request_body(binding)
        if body is not None:
            operation["requestBody"] = body
        operation["responses"] = self.responses(binding)
        operation["security"] = [] if binding.public else _SIGNED_IN
        return operation


# --------------------------------------------------------------------------- document


def _problem_schema() -> Schema:
    return {
        "type": "object",
        "description": "RFC 9457 problem details; every error response has this shape.",
        "required": ["type", "title", "status", "detail", "request_id"],
        "properties": {
            "type": {"type": "string", "format": "uri", "description": "Identifies the kind of problem."},
            "title": {"type": "string", "description": "Short summary of the HTTP status."},
            "status": {"type": "integer", "description": "The HTTP status code."},
            "detail": {"type": "string", "description": "What went wrong with this request."},
            "request_id": {"type": "string", "description": "The request's `X-Request-ID`."},
            "errors": {
                "type": "array",
                "description": "The offending fields, for validation failures.",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {
                        "field": {"type": "string", "description": "Field path, e.g. `steps[2].depends_on`."},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }


def _system_paths() -> Schema:
    def get(summary: str, responses: Schema) -> Schema:
        return {"get": {"tags": ["System"], "summary": summary, "security": [], "responses": responses}}

    status_object: Schema = {"type": "object", "properties": {"status": {"type": "string"}}}
    problem = {"application/problem+json": {"schema": {"$ref": f"#/components/schemas/{PROBLEM_SCHEMA}"}}}
    return {
        "/health": get(
            "The process is alive.",
            {"200": {"description": "Alive.", "content": {"application/json": {"schema": status_object}}}},
        ),
        "/health/ready": get(
            "Every backend service (and so its database) is serving.",
            {
                "200": {"description": "Ready.", "content": {"application/json": {"schema": status_object}}},
                "503": {"description": "A backend service is not serving.", "content": problem},
            },
        ),
        "/metrics": get("Prometheus metrics of the edge.", {"200": {"description": "Text exposition format."}}),
        "/api/v1/status": {
            "get": {
                "tags": ["System"],
                "summary": "Health of every backend service, for dashboards (always 200, unlike readiness).",
                "security": _SIGNED_IN,
                "responses": {
                    "200": {
                        "description": "`ok`, or `degraded` with the services that are not serving.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "status": {"type": "string", "enum": ["ok", "degraded"]},
                                        "services": {"type": "object", "additionalProperties": {"type": "string"}},
                                    },
                                }
                            }
                        },
                    },
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                },
            }
        },
    }


_SIGNED_IN: list[Schema] = [{"bearerAuth": []}, {"apiKeyAuth": []}]

# Streams: documented for their parameters and errors; `x-streaming` marks them for tools that
# expect one response body per request (a fuzzer would wait on them forever).
_RESUME_PARAMETERS: list[Schema] = [
    {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "description": "Resume exactly after this event id (as sent in `id:`).",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "Resume after this event id when the client cannot send headers.",
        "schema": {"type": "integer", "minimum": 0},
    },
]


def _stream_paths() -> Schema:
    sse = {
        "200": {
            "description": "`text/event-stream`: `id: <cursor>`, `event: <type>`, `data: <event envelope>`; "
            "a comment heartbeat every 15 s.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        "400": {"$ref": "#/components/responses/BadRequest"},
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "404": {"$ref": "#/components/responses/NotFound"},
    }

    def stream(summary: str, parameters: list[Schema], responses: Schema, tags: list[str]) -> Schema:
        return {
            "get": {
                "tags": tags,
                "summary": summary,
                "parameters": parameters,
                "security": _SIGNED_IN,
                "responses": responses,
                "x-streaming": True,
            }
        }

    run_id: Schema = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    filters: list[Schema] = [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}
        for name, text in (
            ("workflow_id", "Only events of runs of this workflow."),
            ("run_id", "Only events of this run."),
            ("types", "Comma-separated event types."),
        )
    ]
    return {
        "/api/v1/runs/{id}/events": stream(
            "Server-Sent Events of one run (WatchRun): history after the resume point, then live; the "
            "stream ends after the run's terminal event.",
            [run_id, *_RESUME_PARAMETERS],
            sse,
            ["Events"],
        ),
        "/api/v1/events": stream(
            "Server-Sent Events of every event the caller may see (WatchEvents), filtered; `id:` is the "
            "log cursor.",
            [*filters, *_RESUME_PARAMETERS],
            sse,
            ["Events"],
        ),
        "/api/v1/ws": stream(
            "WebSocket: subscribe/unsubscribe to runs, workflows or agents; auth by header or by a first "
            '`{"action": "auth", "token": ...}` message. See API.md "Events".',
            [],
            {
                "101": {"description": "Switching protocols to WebSocket."},
                "400": {"$ref": "#/components/responses/BadRequest"},
                "401": {"$ref": "#/components/responses/Unauthorized"},
            },
            ["Events"],
        ),
    }


def build_openapi(bindings: Sequence[HttpBinding], comments: Mapping[str, str]) -> Schema:
    """The OpenAPI 3.1 document of every binding (plus the system routes)."""
    services = {binding.service.full_name: binding.service for binding in bindings}
    roots = [
        descriptor
        for service in services.values()
        for method in service.methods
        for descriptor in (method.input_type, method.output_type)
    ]
    messages, enums = _reachable(roots)
    schemas = _SchemaBuilder(messages, enums, comments)
    operations = _OperationBuilder(schemas, comments)
    paths: dict[str, Schema] = {}
    used_ids: set[str] = set()
    for binding in sorted(bindings, key=lambda b: (b.template.openapi_path(), b.verb)):
        operation_id = binding.method.name
        suffix = 2
        while operation_id in used_ids:  # an RPC with additional bindings
            operation_id, suffix = f"{binding.method.name}{suffix}", suffix + 1
        used_ids.add(operation_id)
        paths.setdefault(binding.template.openapi_path(), {})[binding.verb.lower()] = operations.operation(
            binding, operation_id
        )
    paths.update(_system_paths())
    paths.update(_stream_paths())
    problem_content = {"application/problem+json": {"schema": {"$ref": f"#/components/schemas/{PROBLEM_SCHEMA}"}}}
    responses: Schema = {
        name: {"description": description, "content": problem_content} for name, _, description in _ERROR_RESPONSES
    }
    responses["Unauthorized"]["headers"] = {
        "WWW-Authenticate": {"description": "Always `Bearer`.", "schema": {"type": "string"}}
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "FlowForge API",
            "version": "v1",
            "description": "Durable workflow orchestration for HTTP agents. Generated from the protos; "
            "every operation is also a gRPC method (`x-grpc-method`).",
        },
        "tags": [
            *({"name": s.name, "description": comments.get(s.full_name, "")} for s in services.values()),
            {"name": "Events", "description": "Live run events: SSE streams and the WebSocket."},
            {"name": "System", "description": "Health, readiness and metrics of the edge."},
        ],
        "paths": paths,
        "components": {
            "schemas": {**schemas.schemas, PROBLEM_SCHEMA: _problem_schema()},
            "responses": responses,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def as_openapi_30(document: Schema) -> Schema:
    """The same document as OpenAPI 3.0.3, for Swagger UI 4 (which renders no 3.1): a `$ref`
    with sibling keywords becomes an `allOf` (3.0 ignores a `$ref`'s siblings). The 3.1
    document uses nothing else that 3.0 lacks."""

    def convert(node: Any) -> Any:
        if isinstance(node, dict):
            converted = {key: convert(value) for key, value in node.items()}
            if "$ref" in converted and len(converted) > 1:
                return {"allOf": [{"$ref": converted.pop("$ref")}], **converted}
            return converted
        if isinstance(node, list):
            return [convert(item) for item in node]
        return node

    downgraded: Schema = convert(document)
    downgraded["openapi"] = "3.0.3"
    return downgraded


@dataclass(frozen=True)
class OpenApiDocuments:
    """The generated documents, serialised once at startup."""

    document: Schema
    json_31: bytes
    json_30: bytes

    @classmethod
    def build(cls, bindings: Sequence[HttpBinding], comments: Mapping[str, str] | None = None) -> OpenApiDocuments:
        """Generates and serialises both renditions."""
        document = build_openapi(bindings, load_comments() if comments is None else comments)
        return cls(
            document=document,
            json_31=json.dumps(document).encode(),
            json_30=json.dumps(as_openapi_30(document)).encode(),
        )


OPENAPI_KEY = web.AppKey("openapi", OpenApiDocuments)
