"""Request bodies and query strings, checked against the contract (contract.py), or a BadRequest naming the field.

What stays here is what a schema cannot say: JSON that is not text, and the name rule of paths and pages.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import request

from renderq.capabilities import parse_tags
from renderq.paths import check_file_name, invisible_character

from ..errors import BadRequest, UnsupportedMediaType
from . import contract

def json_body() -> dict[str, Any]:
    """The request's JSON object; malformed or non-object bodies, and bodies not sent as JSON, are refused."""
    rule = request.url_rule.rule if request.url_rule is not None else None
    return json_object(request.get_data(), request.mimetype, rule, request.method)


def json_object(raw: bytes, mimetype: str, rule: str | None, method: str) -> dict[str, Any]:
    """A request body as the JSON object the operation (rule, method) documents, or BadRequest (415 when not
    sent as JSON). The one parser of JSON bodies, for Flask's views and the gate's fast routes alike."""
    # A web page may send text/plain to another site without asking it first (no CORS preflight), but never
    # application/json: requiring the JSON type keeps other sites' pages from making changes here.
    if not (mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))):
        raise UnsupportedMediaType("the request body must be JSON, sent with 'Content-Type: application/json'")
    try:
        body = _DECODER.decode(raw.decode("utf-8"))
    except RecursionError:  # the JSON parser recurses once per level of nesting
        raise BadRequest("the request body is nested too deeply") from None
    except ValueError:  # not JSON, or not UTF-8
        body = None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    # JSON may escape half a UTF-16 pair ("\ud800"); such a string cannot be stored or encoded as UTF-8.
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(body):
        raise BadRequest("the request body holds a lone surrogate escape (\\udXXX): not valid Unicode text")
    if rule is not None:
        contract.check_body(rule, method, body)
    return body


def _number(text: str) -> float | int:
    """A JSON number with a fraction: a whole one (`5.0`) is read as the integer it is, since the contract's
    `integer` type admits it and the code behind it counts with it (a range of frames)."""
    value = float(text)
    if value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


# Built once: json.loads with a parse_float builds a decoder per call (2 % of a busy coordinator's time).
_DECODER = json.JSONDecoder(parse_float=_number)


def file_name(name: str, what: str) -> str:
    """`name` if it is one file name under the shared path rule, else BadRequest naming `what` it is."""
    try:
        return check_file_name(name)
    except ValueError as error:
        raise BadRequest(f"{what} cannot be written on every machine: {error}") from None


def query() -> dict[str, Any]:
    """The request's documented query parameters, typed and checked against openapi.yaml."""
    if request.url_rule is None:
        return dict(request.args)
    return contract.query(request.url_rule.rule, request.method, request.args)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any) -> bool:
    pending = [value]
    while pending:  # a loop, not recursion: the body may be nested as deep as the parser allowed
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def integer(source: dict[str, Any], key: str, *, default: Any = ..., minimum: int | None = None,
            maximum: int | None = None) -> int:
    """An integer field of a body or query string merged by hand, which the contract cannot check as one: only the
    seed's claim route (`/get_task`, fields in the query, the body or both) has such a source."""
    if key not in source or source[key] is None:
        if default is ...:
            raise BadRequest(f"'{key}' is required")
        return default
    value = source[key]
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise BadRequest(f"'{key}' must be a whole number, not {source[key]!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{key}' must be a whole number, not {value!r}")
    if minimum is not None and value < minimum:
        raise BadRequest(f"'{key}' must be at least {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise BadRequest(f"'{key}' must be at most {maximum}, not {value}")
    if abs(value) > 2**62:
        raise BadRequest(f"'{key}' is out of range")
    return value


def check_name(value: str, key: str) -> None:
    """Refuse a name the contract's Name schema lets through but paths and pages cannot take (its description says
    so: the path rule's character test, which a pattern would only copy)."""
    if not value.strip():
        raise BadRequest(f"'{key}' must not be empty")
    if "/" in value or "\\" in value or ".." in value or invisible_character(value) is not None:
        raise BadRequest(f"'{key}' must not contain '/', '\\', '..', control or invisible characters: {value!r}")


def tags(values: list[str]) -> list[str]:
    """Tags under the one rule (renderq.capabilities: lowercased, each once), or a BadRequest with its sentence."""
    try:
        return parse_tags(values, split=False)
    except ValueError as error:
        raise BadRequest(f"'tags': {error}") from None
