"""Proto <-> JSON as the public API shows it, walked generically from the descriptors.

Differences from protobuf's canonical JSON mapping (json_format), all fixed by API.md:

- output field names are the proto (snake_case) names; input accepts them and the lowerCamel
  JSON names;
- enums are the lower-case value names without the enum's prefix (`RUN_STATUS_PENDING` ->
  `"pending"`); input also accepts the full name and the number. A zero value named
  `*_UNSPECIFIED` means "not set" and is omitted from output, so clients never see it;
- 64-bit integers are JSON numbers, not strings;
- fields without presence are always printed (`next_page_token: ""`), fields with presence
  only when set;
- `google.protobuf.Value` numbers that are whole are printed as integers (`3`, not `3.0`).

Input is strict: an unknown field, a wrong JSON type or an out-of-range number is a
`FieldError` naming the field path (`steps[2].retry.max_retries`).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, cast

from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, EnumValueDescriptor, FieldDescriptor
from google.protobuf.message import Message

JsonValue = Any
"""A value `json.loads` can return (the recursive union is not expressible for mypy)."""

_F = FieldDescriptor
_INT_RANGES = {
    _F.TYPE_INT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _F.TYPE_UINT32: (0, 2**32 - 1),
    _F.TYPE_FIXED32: (0, 2**32 - 1),
    _F.TYPE_INT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _F.TYPE_UINT64: (0, 2**64 - 1),
    _F.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOAT_TYPES = (_F.TYPE_DOUBLE, _F.TYPE_FLOAT)
_INTEGER = re.compile(r"[+-]?\d+")
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

WRAPPERS = frozenset(
    f"google.protobuf.{name}"
    for name in (
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "StringValue",
        "BytesValue",
    )
)
TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
FIELD_MASK = "google.protobuf.FieldMask"
STRUCT = "google.protobuf.Struct"
VALUE = "google.protobuf.Value"
LIST_VALUE = "google.protobuf.ListValue"
HTTP_BODY = "google.api.HttpBody"
# Well-known types whose JSON form is the string their `ToJsonString` renders.
_JSON_STRING_TYPES = (timestamp_pb2.Timestamp, duration_pb2.Duration, field_mask_pb2.FieldMask)
# Well-known types whose JSON form is one string: they can also come from a query parameter.
TEXT_MESSAGES = frozenset({TIMESTAMP, DURATION, FIELD_MASK}) | WRAPPERS


class FieldError(ValueError):
    """A JSON or text value that does not fit its field; `field` is the path in the request."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def descriptor_of(message: Message) -> Descriptor:
    """`message.DESCRIPTOR` (typed as the Python descriptor; the upb one has the same API)."""
    return cast(Descriptor, message.DESCRIPTOR)


def join_path(prefix: str, name: str) -> str:
    """`prefix.name`, or `name` at the top."""
    return f"{prefix}.{name}" if prefix else name


# --------------------------------------------------------------------------- enums


@cache
def _enum_prefix(enum: EnumDescriptor) -> str:
    """The prefix Buf style puts on every value: `RUN_STATUS_` for RunStatus. Read off the
    `*_UNSPECIFIED` zero value when there is one (exact even for acronyms such as `HTTPMethod`),
    else derived from the enum's CamelCase name."""
    zero = enum.values_by_number.get(0)
    if zero is not None and zero.name.endswith("_UNSPECIFIED"):
        return zero.name[: -len("UNSPECIFIED")]
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", enum.name).upper() + "_"


def enum_value_name(value: EnumValueDescriptor) -> str:
    """The public name of an enum value: `RUN_STATUS_PENDING` -> `pending`."""
    prefix = _enum_prefix(value.type)
    name = value.name[len(prefix) :] if value.name.startswith(prefix) else value.name
    return name.lower()


def is_unset_enum_value(value: EnumValueDescriptor) -> bool:
    """True for the `*_UNSPECIFIED` zero value, which the API treats as "not set"."""
    return value.number == 0 and value.name.endswith("_UNSPECIFIED")


def public_enum_names(enum: EnumDescriptor) -> list[str]:
    """The names clients see and send, without the unset zero value."""
    return [enum_value_name(v) for v in enum.values if not is_unset_enum_value(v)]


def enum_number(enum: EnumDescriptor, token: object, path: str) -> int:
    """The number of a public name, a full value name or a number."""
    if isinstance(token, int) and not isinstance(token, bool):
        if token in enum.values_by_number:
            return token
    elif isinstance(token, str):
        text = token.strip().upper()
        value = enum.values_by_name.get(text) or enum.values_by_name.get(_enum_prefix(enum) + text)
        if value is not None:
            return value.number
    raise FieldError(path, f"must be one of: {', '.join(public_enum_names(enum))}")


# --------------------------------------------------------------------------- output


def _float_to_json(value: float, field_type: int) -> JsonValue:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if field_type == _F.TYPE_FLOAT:
        # A float32 widened to a double prints as 0.10000000149011612; print the shortest
        # decimal that reads back as the same float32 instead.
        for digits in range(6, 10):
            shortest = float(f"{value:.{digits}g}")
            if struct.unpack("<f", struct.pack("<f", shortest))[0] == value:
                return shortest
    return value


def _scalar_to_json(field: FieldDescriptor, value: Any) -> JsonValue:
    if field.type == _F.TYPE_ENUM:
        assert field.enum_type is not None
        enum_value = field.enum_type.values_by_number.get(value)
        # An unknown number (a newer server) stays a number, as in protobuf's JSON mapping.
        return value if enum_value is None else enum_value_name(enum_value)
    if field.type in _FLOAT_TYPES:
        return _float_to_json(value, field.type)
    if field.type == _F.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


def _struct_value_to_json(value: struct_pb2.Value) -> JsonValue:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) <= 2**53:
            return int(number)
        return _float_to_json(number, _F.TYPE_DOUBLE)
    if kind == "struct_value":
        return {k: _struct_value_to_json(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_struct_value_to_json(v) for v in value.list_value.values]
    if kind in ("string_value", "bool_value"):
        return getattr(value, kind)
    return None


def _value_to_json(field: FieldDescriptor, value: Any) -> JsonValue:
    if field.type == _F.TYPE_MESSAGE:
        return message_to_json(value)
    return _scalar_to_json(field, value)


def _map_key_to_json(key: object) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def field_to_json(message: Message, field: FieldDescriptor) -> JsonValue:
    """The JSON of one field of `message` (used for `response_body`)."""
    value = getattr(message, field.name)
    if is_map(field):
        assert field.message_type is not None
        value_field = field.message_type.fields_by_name["value"]
        return {_map_key_to_json(k): _value_to_json(value_field, value[k]) for k in value}
    if field.is_repeated:
        return [_value_to_json(field, item) for item in value]
    return _value_to_json(field, value)


def message_to_json(message: Message) -> JsonValue:
    """The API's JSON for a message (a dict, or a well-known type's own JSON form)."""
    descriptor = descriptor_of(message)
    name = descriptor.full_name
    if name in WRAPPERS:
        inner = descriptor.fields_by_name["value"]
        return _scalar_to_json(inner, getattr(message, inner.name))
    if name == VALUE:
        assert isinstance(message, struct_pb2.Value)
        return _struct_value_to_json(message)
    if name == STRUCT:
        assert isinstance(message, struct_pb2.Struct)
        return {k: _struct_value_to_json(v) for k, v in message.fields.items()}
    if name == LIST_VALUE:
        assert isinstance(message, struct_pb2.ListValue)
        return [_struct_value_to_json(v) for v in message.values]
    if isinstance(message, _JSON_STRING_TYPES):
        # Timestamp (RFC 3339, `Z`), Duration (`1.5s`), FieldMask (`a,b.c`): the strings that
        # MessageToDict would give, without building its printer for every timestamp.
        return message.ToJsonString()
    if name.startswith("google.protobuf."):
        # Empty, Any: the canonical forms.
        return json_format.MessageToDict(message, preserving_proto_field_name=True)
    result: dict[str, JsonValue] = {}
    for field in descriptor.fields:
        if field.is_repeated:
            result[field.name] = field_to_json(message, field)
        elif field.has_presence:
            if message.HasField(field.name):
                result[field.name] = field_to_json(message, field)
        else:
            value = getattr(message, field.name)
            if field.type == _F.TYPE_ENUM:
                assert field.enum_type is not None
                enum_value = field.enum_type.values_by_number.get(value)
                if enum_value is not None and is_unset_enum_value(enum_value):
                    continue
            result[field.name] = _scalar_to_json(field, value)
    return result


# --------------------------------------------------------------------------- field lookup


@cache
def is_map(field: FieldDescriptor) -> bool:
    """True for `map<K, V>` fields (remembered per field: descriptors live as long as the process)."""
    return (
        field.type == _F.TYPE_MESSAGE and field.message_type is not None and field.message_type.GetOptions().map_entry
    )


def is_plain_message(field: FieldDescriptor) -> bool:
    """A singular message field of one of our own messages (not a well-known type): the
    only kind a dotted query parameter may walk through."""
    return (
        field.type == _F.TYPE_MESSAGE
        and not field.is_repeated
        and field.message_type is not None
        and not field.message_type.full_name.startswith("google.")
    )


def is_text_field(field: FieldDescriptor) -> bool:
    """Fields a query parameter, a path segment or a form field can fill from text."""
    if is_map(field):
        return False
    if field.type == _F.TYPE_MESSAGE:
        return field.message_type is not None and field.message_type.full_name in TEXT_MESSAGES
    return True


@cache
def _fields_by_json_key(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    index = {field.json_name: field for field in descriptor.fields}
    index.update({field.name: field for field in descriptor.fields})
    return index


def field_named(descriptor: Descriptor, key: str) -> FieldDescriptor | None:
    """The field called `key` by its proto name or its lowerCamel JSON name."""
    return _fields_by_json_key(descriptor).get(key)


def resolve_field_path(descriptor: Descriptor, dotted: str) -> tuple[FieldDescriptor, ...] | None:
    """The fields along `a.b.c` (each segment a proto or JSON name), or None when a segment is
    unknown or an intermediate field is not a plain singular message."""
    chain: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for segment in dotted.split("."):
        if current is None:
            return None
        field = field_named(current, segment)
        if field is None:
            return None
        chain.append(field)
        current = field.message_type if is_plain_message(field) else None
    return tuple(chain)


def proto_path(chain: Iterable[FieldDescriptor]) -> str:
    """`a.b.c` in proto names."""
    return ".".join(field.name for field in chain)


def parent_of(message: Message, chain: tuple[FieldDescriptor, ...]) -> Message:
    """The message that holds the last field of `chain` (creating none: reading an unset
    sub-message returns its default instance, which only becomes set when written to)."""
    for field in chain[:-1]:
        message = getattr(message, field.name)
    return message


# --------------------------------------------------------------------------- input: JSON


def _int_from_json(field: FieldDescriptor, value: object, path: str) -> int:
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value.strip())
    if number is None:
        raise FieldError(path, "must be an integer")
    low, high = _INT_RANGES[field.type]
    if not low <= number <= high:
        raise FieldError(path, f"must be between {low} and {high}")
    return number


def _float_from_json(value: object, path: str) -> float:
    if isinstance(value, bool):
        raise FieldError(path, "must be a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        if value in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[value]
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise FieldError(path, "must be a number")


def _bytes_from_text(value: str, path: str) -> bytes:
    padded = value + "=" * (-len(value) % 4)
    try:
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FieldError(path, "must be base64") from exc


def _scalar_from_json(field: FieldDescriptor, value: object, path: str) -> Any:
    if field.type == _F.TYPE_ENUM:
        assert field.enum_type is not None
        return enum_number(field.enum_type, value, path)
    if field.type in _INT_RANGES:
        return _int_from_json(field, value, path)
    if field.type in _FLOAT_TYPES:
        return _float_from_json(value, path)
    if field.type == _F.TYPE_BOOL:
        if not isinstance(value, bool):
            raise FieldError(path, "must be true or false")
        return value
    if not isinstance(value, str):
        raise FieldError(path, "must be a string")
    if field.type == _F.TYPE_BYTES:
        return _bytes_from_text(value, path)
    return value


def _wkt_from_json(value: JsonValue, message: Message, path: str) -> None:
    name = descriptor_of(message).full_name
    if name in WRAPPERS:
        inner = descriptor_of(message).fields_by_name["value"]
        setattr(message, inner.name, _scalar_from_json(inner, value, path))
        return
    if name in TEXT_MESSAGES:
        if not isinstance(value, str):
            raise FieldError(path, "must be a string")
        _wkt_from_text(message, value, path)
        return
    if name == STRUCT and not isinstance(value, dict):
        raise FieldError(path, "must be a JSON object")
    if name == LIST_VALUE and not isinstance(value, list):
        raise FieldError(path, "must be a JSON array")
    try:
        json_format.ParseDict(value, message)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise FieldError(path, str(exc)) from exc


def _message_from_json(value: JsonValue, message: Message, path: str) -> None:
    if descriptor_of(message).full_name.startswith("google.protobuf."):
        _wkt_from_json(value, message, path)
    else:
        json_to_message(value, message, path)


def _map_key(field: FieldDescriptor, key: str, path: str) -> Any:
    if field.type == _F.TYPE_BOOL:
        if key not in ("true", "false"):
            raise FieldError(path, "map key must be true or false")
        return key == "true"
    if field.type in _INT_RANGES:
        return _int_from_json(field, key, path)
    return key


def set_field_from_json(message: Message, field: FieldDescriptor, value: JsonValue, path: str) -> None:
    """Sets one field of `message` from its JSON value (null leaves it unset, except for a
    `google.protobuf.Value`, where it is JSON null)."""
    is_value_type = field.message_type is not None and field.message_type.full_name == VALUE
    if value is None and not (is_value_type and not field.is_repeated):
        return
    if is_map(field):
        if not isinstance(value, dict):
            raise FieldError(path, "must be a JSON object")
        assert field.message_type is not None
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        target = getattr(message, field.name)
        for key, item in value.items():
            item_path = f"{path}[{key}]"
            typed_key = _map_key(key_field, key, item_path)
            if value_field.type == _F.TYPE_MESSAGE:
                _message_from_json(item, target[typed_key], item_path)
            else:
                target[typed_key] = _scalar_from_json(value_field, item, item_path)
        return
    if field.is_repeated:
        if not isinstance(value, list):
            raise FieldError(path, "must be a JSON array")
        target = getattr(message, field.name)
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            if item is None and not is_value_type:
                raise FieldError(item_path, "must not be null")
            if field.type == _F.TYPE_MESSAGE:
                _message_from_json(item, target.add(), item_path)
            else:
                target.append(_scalar_from_json(field, item, item_path))
        return
    if field.type == _F.TYPE_MESSAGE:
        sub = getattr(message, field.name)
        sub.SetInParent()
        _message_from_json(value, sub, path)
        return
    setattr(message, field.name, _scalar_from_json(field, value, path))


def json_to_message(
    data: JsonValue, message: Message, path: str = "", *, reserved: Mapping[str, str] | None = None
) -> list[FieldDescriptor]:
    """Fills `message` from a JSON object and returns the fields it named, in order.

    `reserved` maps top-level field names that this object must not set to the reason (e.g.
    a field bound to an HTTP header)."""
    if not isinstance(data, dict):
        raise FieldError(path or "body", "must be a JSON object")
    descriptor = descriptor_of(message)
    named: list[FieldDescriptor] = []
    oneofs: dict[str, str] = {}
    for key, value in data.items():
        field_path = join_path(path, key)
        field = field_named(descriptor, key)
        if field is None:
            raise FieldError(field_path, "unknown field")
        if reserved and field.name in reserved:
            raise FieldError(field_path, reserved[field.name])
        if field in named:
            raise FieldError(field_path, "given twice (by its proto and its JSON name)")
        oneof = field.containing_oneof
        if oneof is not None and value is not None:
            if oneof.name in oneofs:
                raise FieldError(field_path, f"only one of {oneofs[oneof.name]} and {key} may be set")
            oneofs[oneof.name] = key
        set_field_from_json(message, field, value, join_path(path, field.name))
        named.append(field)
    return named


def patch_paths(descriptor: Descriptor, data: Mapping[str, JsonValue], prefix: str = "") -> list[str]:
    """The `update_mask` paths a PATCH body names, JSON Merge Patch style (RFC 7396): a nested
    object of a plain message field names its leaves (`retry_config.max_retries`), so the
    siblings it leaves out keep their values. Free-form JSON (Struct), well-known types, maps and
    lists are replaced whole. Call after `json_to_message` has accepted the same data."""
    paths: list[str] = []
    for key, value in data.items():
        field = field_named(descriptor, key)
        if field is None:
            continue
        path = f"{prefix}{field.name}"
        nested = field.message_type
        if (
            isinstance(value, dict)
            and value
            and nested is not None
            and not field.is_repeated
            and not nested.full_name.startswith("google.")
        ):
            paths.extend(patch_paths(nested, value, f"{path}."))
        else:
            paths.append(path)
    return paths


# --------------------------------------------------------------------------- input: text


def _camel_to_snake(segment: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", segment).lower()


def _wkt_from_text(message: Message, text: str, path: str) -> None:
    name = descriptor_of(message).full_name
    if name in WRAPPERS:
        inner = descriptor_of(message).fields_by_name["value"]
        setattr(message, inner.name, scalar_from_text(inner, text, path))
        return
    if isinstance(message, field_mask_pb2.FieldMask):
        # Paths may be given in proto (snake_case) or JSON (lowerCamel) spelling.
        message.paths.extend(
            ".".join(_camel_to_snake(s) for s in item.strip().split(".")) for item in text.split(",") if item.strip()
        )
        return
    assert isinstance(message, timestamp_pb2.Timestamp | duration_pb2.Duration)
    try:
        message.FromJsonString(text)
    except (ValueError, json_format.ParseError) as exc:
        what = "an RFC 3339 timestamp" if name == TIMESTAMP else "a duration such as `1.5s`"
        raise FieldError(path, f"must be {what}") from exc


def scalar_from_text(field: FieldDescriptor, text: str, path: str) -> Any:
    """The typed value of a scalar or enum field given as text (query, path or form)."""
    if field.type == _F.TYPE_ENUM:
        assert field.enum_type is not None
        return enum_number(field.enum_type, text, path)
    if field.type in _INT_RANGES:
        if not _INTEGER.fullmatch(text.strip()):
            raise FieldError(path, "must be an integer")
        return _int_from_json(field, text, path)
    if field.type in _FLOAT_TYPES:
        return _float_from_json(text, path)
    if field.type == _F.TYPE_BOOL:
        lowered = text.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise FieldError(path, "must be true or false")
    if field.type == _F.TYPE_BYTES:
        return _bytes_from_text(text, path)
    return text


def set_field_from_text(message: Message, chain: tuple[FieldDescriptor, ...], texts: list[str], path: str) -> None:
    """Sets the field at the end of `chain` from text values: each becomes one item of a
    repeated field; a singular field takes exactly one."""
    parent = parent_of(message, chain)
    field = chain[-1]
    if not is_text_field(field):
        raise FieldError(path, "cannot be given as text")
    if not field.is_repeated and len(texts) != 1:
        raise FieldError(path, "must be given once")
    if field.type == _F.TYPE_MESSAGE:
        if field.is_repeated:
            for text in texts:
                _wkt_from_text(getattr(parent, field.name).add(), text, path)
        else:
            sub = getattr(parent, field.name)
            sub.SetInParent()
            _wkt_from_text(sub, texts[0], path)
        return
    values = [scalar_from_text(field, text, path) for text in texts]
    if field.is_repeated:
        getattr(parent, field.name).extend(values)
    else:
        setattr(parent, field.name, values[0])


# --------------------------------------------------------------------------- fields selection


def select_fields(document: JsonValue, names: Iterable[str], *, items_key: str | None) -> JsonValue:
    """Keeps only `names` among the top-level keys of a resource, of each resource of a bare
    array, or of each resource under `items_key` of a list response."""
    wanted = set(names)

    def pick(resource: JsonValue) -> JsonValue:
        if not isinstance(resource, dict):
            return resource
        return {k: v for k, v in resource.items() if k in wanted}

    if isinstance(document, list):
        return [pick(item) for item in document]
    if items_key is not None and isinstance(document, dict) and isinstance(document.get(items_key), list):
        return {**document, items_key: [pick(item) for item in document[items_key]]}
    return pick(document)
