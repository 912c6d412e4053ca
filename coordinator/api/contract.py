"""The API's one contract: openapi.yaml describes every request's shape, and requests are checked against it here.

Nothing else writes a shape down: an endpoint reads fields the document guarantees (type, range, length, required)
and checks only what a schema cannot say (a frame range that is empty, a file that must already be stored).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jsonschema_rs
import yaml

from ..errors import BadRequest
from .openapi import spec_bytes

# The store keeps integers in SQLite's signed 64-bit columns: an integer field the document leaves unbounded is
# still held within this, so an oversized number is a 400 here and never an overflow in the database.
INTEGER_BOUND = 2**62
# A refusal quotes the offending value; a huge one is cut so the error stays one readable sentence.
_MAX_MESSAGE = 300


class Operation:
    """The checkable parts of one operation: its JSON body schema and its query parameters' schemas."""

    def __init__(self, spec: dict, operation: dict) -> None:
        components = {"components": spec.get("components", {})}
        body = (((operation.get("requestBody") or {}).get("content") or {}).get("application/json") or {})
        schema = body.get("schema")
        self.body_schema = {**schema, **components} if schema else {}
        self.body = jsonschema_rs.Draft202012Validator(self.body_schema) if schema else None
        self.query_types: dict[str, str] = {}
        # Documented defaults of absent parameters: the view reads them from the document, never a copy of its own.
        self.query_defaults: dict[str, Any] = {}
        properties: dict[str, Any] = {}
        required: list[str] = []
        for parameter in operation.get("parameters", []):
            parameter = _resolve(spec, parameter)
            if parameter.get("in") != "query":
                continue
            parameter_schema = parameter.get("schema", {})
            properties[parameter["name"]] = parameter_schema
            resolved = _resolve(spec, parameter_schema)
            self.query_types[parameter["name"]] = resolved.get("type", "string")
            if "default" in resolved:
                self.query_defaults[parameter["name"]] = resolved["default"]
            if parameter.get("required"):
                required.append(parameter["name"])
        self.query_schema = {"type": "object", "properties": properties, "required": required, **components}
        self.query = jsonschema_rs.Draft202012Validator(self.query_schema)


def load() -> None:
    """Read and compile the contract now (the app does it at start), so no request pays for it."""
    _operations()


@functools.cache
def _operations() -> dict[tuple[str, str], Operation]:
    """{(OpenAPI path, lower-case method): Operation} of every operation in the shipped document."""
    spec = yaml.safe_load(spec_bytes())
    _bound_integers(spec)
    return {(path, method): Operation(spec, operation)
            for path, item in spec["paths"].items() for method, operation in item.items()
            if isinstance(operation, dict) and ("requestBody" in operation or "parameters" in operation)}


def _bound_integers(node: Any) -> None:
    """Give every integer schema that has no bound the store's bound (see INTEGER_BOUND)."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            node.setdefault("minimum", -INTEGER_BOUND)
            node.setdefault("maximum", INTEGER_BOUND)
        for value in node.values():
            _bound_integers(value)
    elif isinstance(node, list):
        for value in node:
            _bound_integers(value)


def _resolve(spec: dict, node: dict) -> dict:
    """`node`, or what its local `$ref` ("#/components/...") points at."""
    reference = node.get("$ref")
    if not reference:
        return node
    for part in reference.lstrip("#/").split("/"):
        spec = spec[part.replace("~1", "/").replace("~0", "~")]
    return spec


@functools.lru_cache(maxsize=1024)
def _operation(rule: str, method: str) -> Operation | None:
    return _operations().get((re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule), method.lower()))


def check_body(rule: str, method: str, body: Any) -> None:
    """Refuse (BadRequest) a JSON body that does not match the operation's documented schema."""
    operation = _operation(rule, method)
    if operation is not None and operation.body is not None:
        _raise_first_error(operation.body, operation.body_schema, body)


def query(rule: str, method: str, args: Mapping[str, str]) -> dict[str, Any]:
    """The operation's documented query parameters, converted to their types and checked against their schemas;
    an absent (or empty) one with a documented default has that default, other absent ones are left out."""
    operation = _operation(rule, method)
    if operation is None:
        return dict(args)
    values: dict[str, Any] = {}
    for name, kind in operation.query_types.items():
        if name in args and args[name] != "":
            values[name] = _converted(name, args[name], kind)
    _raise_first_error(operation.query, operation.query_schema, values)
    return {**operation.query_defaults, **values}


def _converted(name: str, text: str, kind: str) -> Any:
    """A query string value as the JSON type its schema declares."""
    try:
        if kind == "integer":
            return int(text.strip())
        if kind == "number":
            value = float(text.strip())
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(text)
            return value
    except ValueError:
        noun = "a whole number" if kind == "integer" else "a number"
        raise BadRequest(f"'{name}' must be {noun}, not {text[:_MAX_MESSAGE]!r}") from None
    if kind == "boolean":
        if text.lower() not in ("true", "false", "1", "0"):
            raise BadRequest(f"'{name}' must be true or false, not {text[:_MAX_MESSAGE]!r}")
        return text.lower() in ("true", "1")
    return text


def _raise_first_error(validator: Any, schema: dict, instance: Any) -> None:
    for error in validator.iter_errors(instance):
        raise BadRequest(_sentence(error, schema))


# What a value of each JSON type is called in a refusal; a schema may say better with `x-noun`.
_NOUNS = {"integer": "a whole number", "number": "a number", "string": "a string", "boolean": "true or false",
          "array": "a list", "object": "a JSON object", "null": "null"}


def _sentence(error: Any, root: dict) -> str:
    """One plain sentence for a schema error: "'field' must be ..., not ...", naming the field by its path."""
    field = "/".join(str(part) for part in error.instance_path)
    kind = type(error.kind).__name__
    schema: Any = root
    for part in list(error.schema_path)[:-1]:
        schema = schema[part] if isinstance(schema, dict) else schema[int(part)]
    if kind == "Required":
        return f"'{error.message.split(chr(34))[1]}' is required" if '"' in error.message else error.message
    if not isinstance(schema, dict) or not field:
        return _cut(f"the request does not match the API (see /openapi.yaml): {error.message}")
    kinds = schema.get("type", "")
    kinds = [k for k in ([kinds] if isinstance(kinds, str) else kinds) if k != "null"]
    noun = schema.get("x-noun") or " or ".join(_NOUNS.get(k, k) for k in kinds) or "as documented"
    value = _cut(repr(error.instance))
    if kind in ("Minimum", "Maximum", "ExclusiveMinimum", "ExclusiveMaximum"):
        low, high = schema.get("minimum", -INTEGER_BOUND), schema.get("maximum", INTEGER_BOUND)
        if low > -INTEGER_BOUND and high < INTEGER_BOUND:
            return f"'{field}' must be {noun} from {low} to {high}, not {value}"
        return f"'{field}' must be {noun} " + (f"at least {low}" if kind.endswith("Minimum") else f"at most {high}") \
            + f", not {value}"
    if kind == "MaxLength":
        return f"'{field}' is longer than {schema['maxLength']} characters"
    if kind == "MaxItems":
        return f"'{field}' lists more than {schema['maxItems']} items"
    if kind == "Enum":
        return f"'{field}' must be one of {', '.join(map(str, schema['enum']))}, not {value}"
    if kind == "Type" or (kind == "Pattern" and "x-noun" in schema):
        return f"'{field}' must be {noun}, not {value}"
    return _cut(f"'{field}' does not match the API (see /openapi.yaml): {error.message}")


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."
