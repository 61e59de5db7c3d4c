"""REST routes built from the `google.api.http` annotations, and the REST <-> gRPC transcoding.

Every unary RPC of the fronted services with an http rule gets a route; nothing here knows a
particular RPC or message. How a request is filled, in order:

1. the body (`body: "*"`: the whole request; `body: "field"`: that field; a
   `google.api.HttpBody` field takes the raw bytes and content type);
2. the path variables (a body that disagrees with the path is a 400);
3. the query parameters (every field the path and the body do not fill; dotted names reach
   into sub-messages; unknown names are a 400, except `fields`, the response field selection);
4. headers bound to fields (`If-Match` -> `etag`, `Idempotency-Key` -> `idempotency_key`,
   `webhook-*` -> `webhook_*`), which may not come any other way;
5. for PATCH, an empty `update_mask` is filled with the body's top-level fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, cast
from urllib.parse import parse_qsl, quote

from aiohttp import web
from google.api import annotations_pb2, http_pb2, httpbody_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from multidict import MultiDict, MultiMapping
from opentelemetry import context as otel_context
from opentelemetry import propagate

from edge import jsonmap
from edge.jsonmap import FieldError, JsonValue
from edge.middlewares import REQUEST_ID_KEY
from edge.pathtemplate import PathTemplate
from edge.problems import ProblemError, bad_request
from edge.settings import SETTINGS_KEY
from edge.upstream import UPSTREAMS_KEY
from flowforge_common.policy import MethodPolicy, method_policy
from flowforge_common.telemetry import tracing_enabled

# Headers that fill a request field of the same meaning when the request message has it.
HEADER_FIELDS: Mapping[str, str] = {
    "If-Match": "etag",
    "Idempotency-Key": "idempotency_key",
    "webhook-id": "webhook_id",
    "webhook-timestamp": "webhook_timestamp",
    "webhook-signature": "webhook_signature",
}
# Request headers passed on to the services as gRPC metadata (plus `x-request-id`).
FORWARDED_HEADERS = ("authorization", "x-api-key", "traceparent", "tracestate")
# RFC 6749 section 4.4.2: an OAuth token endpoint takes form-encoded bodies. No proto option
# declares this, so the RPC is named here; every other body is JSON only, which also keeps
# cross-site HTML forms from reaching the API without a CORS preflight.
FORM_BODY_METHODS = frozenset({"flowforge.auth.v1.AuthService.IssueToken"})
SELECT_PARAM = "fields"
JSON_TYPES = re.compile(r"application/(?:[\w.+-]+\+)?json")
FORM_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class HttpBinding:
    """One REST route of one RPC (an RPC has one per http rule and additional binding)."""

    service: ServiceDescriptor
    method: MethodDescriptor
    verb: str
    template: PathTemplate
    body: str
    response_body: str
    policy: MethodPolicy | None
    path_fields: Mapping[str, tuple[FieldDescriptor, ...]]
    header_fields: Mapping[str, FieldDescriptor]

    @property
    def rpc_path(self) -> str:
        """`/package.Service/Method`, the gRPC method path."""
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def success_code(self) -> int:
        """HTTP status on success, from the RPC's `flowforge.options.v1.policy`."""
        return (self.policy.success_code if self.policy is not None else 0) or 200

    @property
    def public(self) -> bool:
        """True when the RPC needs no credentials."""
        return self.policy is not None and self.policy.public

    @cached_property
    def request_class(self) -> type[Message]:
        """Message class of the request."""
        return message_factory.GetMessageClass(self.method.input_type)

    @cached_property
    def response_class(self) -> type[Message]:
        """Message class of the response."""
        return message_factory.GetMessageClass(self.method.output_type)

    @property
    def body_field(self) -> FieldDescriptor | None:
        """The request field the body fills (None for `*` and for no body)."""
        return self.method.input_type.fields_by_name[self.body] if self.body not in ("", "*") else None

    @property
    def response_field(self) -> FieldDescriptor | None:
        """The response field REST renders (None: the whole response)."""
        return self.method.output_type.fields_by_name[self.response_body] if self.response_body else None

    @property
    def update_mask_field(self) -> FieldDescriptor | None:
        """The FieldMask the edge derives from a PATCH body, if the request has one."""
        field = self.method.input_type.fields_by_name.get("update_mask")
        if self.verb != "PATCH" or field is None or field.message_type is None:
            return None
        return field if field.message_type.full_name == jsonmap.FIELD_MASK else None

    @property
    def form_body(self) -> bool:
        """True when the body may be form-encoded as well as JSON (whole-request bodies only:
        form fields are request fields)."""
        return self.method.full_name in FORM_BODY_METHODS and self.body == "*"

    @property
    def resource_descriptor(self) -> Descriptor:
        """The message REST renders: the `response_body` field's message, or the response."""
        field = self.response_field
        if field is not None and field.message_type is not None and not jsonmap.is_map(field):
            return field.message_type
        return self.method.output_type

    @property
    def items_field(self) -> FieldDescriptor | None:
        """The `items` list of a list response (API.md's list shape), where `fields` applies."""
        if self.response_field is not None:
            return None
        field = self.method.output_type.fields_by_name.get("items")
        return field if field is not None and field.is_repeated and field.message_type is not None else None

    @property
    def selectable(self) -> Descriptor | None:
        """The message whose top-level fields `?fields=` selects, if the route renders one."""
        if self.success_code == 204 or self.resource_descriptor.full_name.startswith("google."):
            return None
        items = self.items_field
        return items.message_type if items is not None else self.resource_descriptor

    def resource_message(self, response: Message) -> Message | None:
        """The rendered message of a response when it is a single resource (not a list)."""
        field = self.response_field
        if field is None:
            return None if self.items_field is not None else response
        if field.is_repeated or field.type != FieldDescriptor.TYPE_MESSAGE:
            return None
        resource: Message = getattr(response, field.name)
        return resource


def _binding(service: ServiceDescriptor, method: MethodDescriptor, rule: http_pb2.HttpRule) -> HttpBinding:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise ValueError(f"{method.full_name}: http rule without a pattern")
    if kind == "custom":
        verb, path = rule.custom.kind.upper(), rule.custom.path
    else:
        verb, path = kind.upper(), getattr(rule, kind)
    template = PathTemplate.parse(path)
    request = method.input_type
    path_fields: dict[str, tuple[FieldDescriptor, ...]] = {}
    for field_path in template.field_paths:
        chain = jsonmap.resolve_field_path(request, field_path)
        if chain is None or chain[-1].is_repeated or chain[-1].type == FieldDescriptor.TYPE_MESSAGE:
            raise ValueError(f"{method.full_name}: path variable {field_path!r} is not a scalar request field")
        path_fields[jsonmap.proto_path(chain)] = chain
    if rule.body not in ("", "*") and rule.body not in request.fields_by_name:
        raise ValueError(f"{method.full_name}: body field {rule.body!r} does not exist")
    if rule.response_body and rule.response_body not in method.output_type.fields_by_name:
        raise ValueError(f"{method.full_name}: response_body {rule.response_body!r} does not exist")
    bound = {chain[0].name for chain in path_fields.values()} | {rule.body}
    header_fields = {
        header: request.fields_by_name[name]
        for header, name in HEADER_FIELDS.items()
        if name in request.fields_by_name
        and name not in bound
        and request.fields_by_name[name].type == FieldDescriptor.TYPE_STRING
        and not request.fields_by_name[name].is_repeated
    }
    return HttpBinding(
        service=service,
        method=method,
        verb=verb,
        template=template,
        body=rule.body,
        response_body=rule.response_body,
        policy=method_policy(method),
        path_fields=path_fields,
        header_fields=header_fields,
    )


def bindings_for(services: Sequence[ServiceDescriptor]) -> list[HttpBinding]:
    """The REST bindings of every unary RPC with a `google.api.http` rule. Streaming RPCs get
    none: their REST faces are the SSE and WebSocket relays. A malformed rule is a ValueError
    at startup rather than a broken route."""
    bindings: list[HttpBinding] = []
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if method.client_streaming or method.server_streaming or not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            bindings.extend(_binding(service, method, r) for r in (rule, *rule.additional_bindings))
    return bindings


# --------------------------------------------------------------------------- request


@dataclass(frozen=True)
class HttpRequestParts:
    """What transcoding reads from an HTTP request (kept apart from aiohttp for unit tests)."""

    path_params: Mapping[str, str]
    query: MultiMapping[str]
    headers: Mapping[str, str]
    body: bytes = b""
    content_type: str = ""


@dataclass(frozen=True)
class TranscodedRequest:
    """The request message, and the `?fields=` selection (proto names) when one was asked."""

    message: Message
    fields: tuple[str, ...] = ()


def _field_problem(error: FieldError) -> ProblemError:
    return bad_request(error.field, error.message)


def _load_json(body: bytes) -> JsonValue:
    def reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # json.loads keeps the last of duplicate keys; two parsers reading one body
        # differently is how request smuggling starts, so refuse it.
        document: dict[str, Any] = {}
        for key, value in pairs:
            if key in document:
                raise ValueError(f"duplicate key {key!r}")
            document[key] = value
        return document

    def reject_constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(body, object_pairs_hook=reject_duplicates, parse_constant=reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProblemError(400, f"the request body is not valid JSON: {exc}", "MALFORMED_JSON") from exc


def _apply_text_params(
    binding: HttpBinding, message: Message, params: MultiMapping[str], *, what: str, from_body: bool
) -> list[FieldDescriptor]:
    """Fills fields from query parameters or form fields; returns the top-level fields set."""
    request = binding.method.input_type
    headers = {field.name: header for header, field in binding.header_fields.items()}
    touched: list[FieldDescriptor] = []
    for key in dict.fromkeys(params.keys()):
        if key == SELECT_PARAM and binding.selectable is not None and not from_body:
            continue
        chain = jsonmap.resolve_field_path(request, key)
        if chain is None or not jsonmap.is_text_field(chain[-1]):
            raise bad_request(key, f"unknown {what}")
        top = chain[0]
        if top.name in headers:
            raise bad_request(key, f"send it as the {headers[top.name]} header")
        if not from_body:
            if jsonmap.proto_path(chain) in binding.path_fields:
                raise bad_request(key, "is set by the URL path")
            if binding.body == "*" or top == binding.body_field:
                raise bad_request(key, "is set by the request body")
        texts = [text for value in params.getall(key) for text in _split(chain[-1], value)]
        if not texts:
            continue
        try:
            jsonmap.set_field_from_text(message, chain, texts, key)
        except FieldError as error:
            raise _field_problem(error) from error
        touched.append(top)
    return touched


def _split(field: FieldDescriptor, value: str) -> list[str]:
    """Values of one parameter: a repeated field also takes `a,b`; an empty value is absent."""
    if field.is_repeated:
        return [item for item in (part.strip() for part in value.split(",")) if item]
    return [value] if value.strip() else []


def _apply_body(binding: HttpBinding, parts: HttpRequestParts, message: Message) -> list[str] | None:
    """Fills the body's fields; returns the field paths the body object named (for update_mask)."""
    target = binding.body_field
    if target is not None and target.message_type is not None and target.message_type.full_name == jsonmap.HTTP_BODY:
        raw = getattr(message, target.name)
        assert isinstance(raw, httpbody_pb2.HttpBody)
        raw.content_type = parts.content_type
        raw.data = parts.body
        return None
    if not parts.body.strip():
        document: JsonValue = {}
    elif JSON_TYPES.fullmatch(parts.content_type):
        document = _load_json(parts.body)
    elif binding.form_body and parts.content_type == FORM_TYPE:
        return [field.name for field in _apply_form(binding, parts.body, message)]
    else:
        accepted = "application/json" + (f", {FORM_TYPE}" if binding.form_body else "")
        # RFC 9110 section 15.5.16: say which media types the method would have accepted.
        advertise = "Accept-Patch" if binding.verb == "PATCH" else "Accept-Post"
        raise ProblemError(
            415, f"the request body must be {accepted}", "UNSUPPORTED_MEDIA_TYPE", headers={advertise: accepted}
        )
    try:
        if target is None:
            reserved = {
                field.name: f"send it as the {header} header" for header, field in binding.header_fields.items()
            }
            jsonmap.json_to_message(document, message, reserved=reserved)
            return jsonmap.patch_paths(jsonmap.descriptor_of(message), cast(dict[str, JsonValue], document))
        if target.type == FieldDescriptor.TYPE_MESSAGE and not target.is_repeated:
            sub = getattr(message, target.name)
            sub.SetInParent()
            if jsonmap.descriptor_of(sub).full_name.startswith("google."):
                jsonmap.set_field_from_json(message, target, document, "body")
                return None
            jsonmap.json_to_message(document, sub)
            return jsonmap.patch_paths(jsonmap.descriptor_of(sub), cast(dict[str, JsonValue], document))
        jsonmap.set_field_from_json(message, target, document, "body")
    except FieldError as error:
        raise _field_problem(error) from error
    return None


def _apply_form(binding: HttpBinding, body: bytes, message: Message) -> list[FieldDescriptor]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProblemError(400, "the form body is malformed", "BAD_REQUEST") from exc
    return _apply_text_params(binding, message, MultiDict(pairs), what="form field", from_body=True)


def _apply_path(binding: HttpBinding, path_params: Mapping[str, str], message: Message) -> None:
    for field_path, text in path_params.items():
        chain = binding.path_fields[field_path]
        field = chain[-1]
        try:
            value = jsonmap.scalar_from_text(field, text, field_path)
        except FieldError as error:
            raise _field_problem(error) from error
        parent = jsonmap.parent_of(message, chain)
        current = getattr(parent, field.name)
        if current != field.default_value and current != value:
            raise bad_request(field_path, "the body disagrees with the URL path")
        setattr(parent, field.name, value)


def _entity_tag(value: str) -> str | None:
    """The first entity tag of an `If-Match` value, unquoted; None for `*` (any version)."""
    value = value.strip()
    if value == "*":
        return None
    quoted = re.match(r'(?:W/)?"([^"]*)"', value)
    return quoted.group(1) if quoted else value


def _apply_headers(binding: HttpBinding, headers: Mapping[str, str], message: Message) -> None:
    for header, field in binding.header_fields.items():
        value = headers.get(header)
        if value is None:
            continue
        tag = _entity_tag(value) if header == "If-Match" else value.strip()
        if tag:
            setattr(message, field.name, tag)


def _selection(binding: HttpBinding, query: MultiMapping[str]) -> tuple[str, ...]:
    selectable = binding.selectable
    if selectable is None or SELECT_PARAM not in query:
        return ()
    names: list[str] = []
    for value in query.getall(SELECT_PARAM):
        for name in (part.strip() for part in value.split(",")):
            if not name:
                continue
            field = jsonmap.field_named(selectable, name)
            if field is None:
                raise bad_request(SELECT_PARAM, f"{selectable.name} has no field {name!r}")
            names.append(field.name)
    return tuple(names)


def transcode_request(binding: HttpBinding, parts: HttpRequestParts) -> TranscodedRequest:
    """Builds the request message of `binding` from an HTTP request; ProblemError on a bad one."""
    message = binding.request_class()
    body_paths = _apply_body(binding, parts, message) if binding.body else None
    _apply_path(binding, parts.path_params, message)
    _apply_text_params(binding, message, parts.query, what="query parameter", from_body=False)
    _apply_headers(binding, parts.headers, message)
    mask_field = binding.update_mask_field
    if mask_field is not None and body_paths is not None:
        mask = getattr(message, mask_field.name)
        if not mask.paths:
            path_tops = {chain[0].name for chain in binding.path_fields.values()}
            mask.paths.extend(
                path for path in body_paths if path.split(".", 1)[0] not in path_tops and path != mask_field.name
            )
    return TranscodedRequest(message, _selection(binding, parts.query))


def forwarded_metadata(headers: Mapping[str, str], request_id: str) -> list[tuple[str, str]]:
    """Credentials and trace context as gRPC metadata; a header that metadata cannot carry
    (non-ASCII or control characters) is a 400, not a crash of the call."""
    metadata = [("x-request-id", request_id)]
    for name in FORWARDED_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        if not (value.isascii() and value.isprintable()):
            raise ProblemError(400, f"the {name} header has characters it may not carry", "BAD_REQUEST")
        metadata.append((name, value))
    return metadata


# --------------------------------------------------------------------------- response


def _dumps(document: JsonValue) -> str:
    return json.dumps(document, ensure_ascii=False, allow_nan=False)


def _location(resource: Message, request: Message, request_path: str, getter: PathTemplate | None) -> str | None:
    """Where a created resource lives: its GET route when one returns the same message type,
    else the request path plus the resource's `id`."""

    def value_of(name: str) -> str:
        for source in (resource, request):
            field = jsonmap.descriptor_of(source).fields_by_name.get(name)
            if field is not None and not field.is_repeated and field.type != FieldDescriptor.TYPE_MESSAGE:
                return str(getattr(source, name))
        return ""

    if getter is not None:
        values = {name: value_of(name) for name in getter.field_paths}
        if all(values.values()):
            return getter.expand(values)
    resource_id = value_of("id") if "id" in jsonmap.descriptor_of(resource).fields_by_name else ""
    return f"{request_path.rstrip('/')}/{quote(resource_id, safe='')}" if resource_id else None


def render_response(
    binding: HttpBinding,
    transcoded: TranscodedRequest,
    response: Message,
    *,
    request_path: str,
    location_getter: PathTemplate | None,
) -> web.Response:
    """The HTTP response of a successful call: status from the policy, `response_body`
    applied, `Location` for creates, `ETag` when the resource has one."""
    if binding.success_code == 204:
        return web.Response(status=204)
    headers: dict[str, str] = {}
    resource = binding.resource_message(response)
    if resource is not None:
        etag = jsonmap.descriptor_of(resource).fields_by_name.get("etag")
        if etag is not None and etag.type == FieldDescriptor.TYPE_STRING and getattr(resource, etag.name):
            headers["ETag"] = f'"{getattr(resource, etag.name)}"'
        if binding.success_code == 201:
            location = _location(resource, transcoded.message, request_path, location_getter)
            if location is not None:
                headers["Location"] = location
    field = binding.response_field
    rendered = getattr(response, field.name) if field is not None and not field.is_repeated else response
    if isinstance(rendered, httpbody_pb2.HttpBody):
        return web.Response(
            status=binding.success_code,
            body=rendered.data,
            headers={**headers, "Content-Type": rendered.content_type or "application/octet-stream"},
        )
    document = jsonmap.field_to_json(response, field) if field is not None else jsonmap.message_to_json(response)
    if transcoded.fields:
        items = binding.items_field
        document = jsonmap.select_fields(document, transcoded.fields, items_key=items.name if items else None)
    return web.json_response(document, status=binding.success_code, headers=headers, dumps=_dumps)


# --------------------------------------------------------------------------- routes


class TranscodingHandler:
    """The aiohttp handler of one binding (aiohttp wants a coroutine function: `handle`)."""

    def __init__(self, binding: HttpBinding, location_getter: PathTemplate | None) -> None:
        self.binding = binding
        self._location_getter = location_getter
        self._tracing = tracing_enabled()

    async def handle(self, request: web.Request) -> web.Response:
        """Transcodes the request, calls the RPC with the caller's credentials, renders."""
        binding = self.binding
        parts = HttpRequestParts(
            path_params=binding.template.bind(request.match_info),
            query=request.query,
            headers=request.headers,
            body=await request.read() if binding.body else b"",
            content_type=request.content_type,
        )
        transcoded = transcode_request(binding, parts)
        metadata = forwarded_metadata(request.headers, request[REQUEST_ID_KEY])
        # With tracing on, honour the caller's `traceparent`: the gRPC client span becomes its
        # child. Without, the forwarded header carries the caller's trace context as it came.
        token = otel_context.attach(propagate.extract(request.headers)) if self._tracing else None
        try:
            response = await request.app[UPSTREAMS_KEY].call(
                binding.service.full_name,
                binding.rpc_path,
                transcoded.message,
                binding.response_class,
                metadata=metadata,
                deadline_seconds=request.app[SETTINGS_KEY].request_timeout_seconds,
            )
        finally:
            if token is not None:
                otel_context.detach(token)
        return render_response(
            binding, transcoded, response, request_path=request.path, location_getter=self._location_getter
        )


def location_getters(bindings: Sequence[HttpBinding]) -> dict[str, PathTemplate]:
    """For each create (201) RPC, the template of a GET route that returns the same message
    and whose variables the created resource (or the create request) can fill."""
    getters = [
        b
        for b in bindings
        if b.verb == "GET"
        and b.response_field is not None
        and not b.response_field.is_repeated
        and b.response_field.type == FieldDescriptor.TYPE_MESSAGE
    ]
    found: dict[str, PathTemplate] = {}
    for create in (b for b in bindings if b.success_code == 201):
        names = set(create.resource_descriptor.fields_by_name) | set(create.method.input_type.fields_by_name)
        for getter in getters:
            if getter.resource_descriptor == create.resource_descriptor and set(getter.template.field_paths) <= names:
                found[create.method.full_name] = getter.template
                break
    return found


def add_transcoded_routes(app: web.Application, bindings: Sequence[HttpBinding]) -> None:
    """Registers every binding, most specific template first, one resource per path so that a
    wrong method gets a 405 listing every method of that path."""
    getters = location_getters(bindings)
    by_path: dict[str, list[HttpBinding]] = {}
    for binding in sorted(bindings, key=lambda b: b.template.specificity()):
        by_path.setdefault(binding.template.aiohttp_path(), []).append(binding)
    for path, group in by_path.items():
        resource = app.router.add_resource(path)
        for binding in group:
            resource.add_route(binding.verb, TranscodingHandler(binding, getters.get(binding.method.full_name)).handle)
