"""The typed API contract's machinery: the route table entry (`Route`), decoding request bodies
into msgspec models (the one place a decode error becomes our 400), encoding answers, and the
OpenAPI 3.1 document generated from the route tables and the models.

Adding a route is one `Route` entry in a module's `ROUTES`; adding a field is one model field.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from cloudfs_server.errors import BadBlockIdError, BadRequestError
from cloudfs_server.model import BLOCK_ID_PATTERN

Handler = Callable[..., Awaitable[web.StreamResponse]]
J = dict[str, Any]

# Bodies bigger than this are decoded in a worker thread (see docs/architecture.md, "Contract").
BIG_JSON_BYTES = 1024 * 1024
JSON = "application/json"
OCTET = "application/octet-stream"
TEXT = "text/plain"


class Error(msgspec.Struct):
    """Every 4xx/5xx body. Some codes add details (`node`, `missing`, `size`, …)."""

    error: str
    message: str


@dataclass(frozen=True)
class Param:
    """A path, query or header parameter, documented in the OpenAPI document."""

    name: str
    where: str  # "path" | "query" | "header"
    schema: J
    description: str
    required: bool = False
    error: tuple[int, str] | None = None  # the status and codes a bad value answers


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: after a `status` answer of this route, `operation` may follow with
    `parameters` taken from the answer (runtime expressions such as `$response.body#/id`)."""

    status: int
    operation: str
    parameters: dict[str, str]
    body: J | None = None  # the next request's body, e.g. {"session": "$response.body#/session"}
    name: str | None = None  # the link's key (default: the operation)


@dataclass(frozen=True)
class Route:
    """One operation: what `setup` registers and what the OpenAPI document says about it.

    `body`: the request model (decoded and checked before the handler runs, which then gets it
    as its second argument); `body_optional`: an empty body decodes as `body()`; `raw_body`:
    the body is bytes (blocks) of type `raw_type`; `parse`: decodes the body instead of
    `decode(body, ...)` (the batch: per-op errors), `body` then only documents it.
    `responses`: status → (description, model or None; `bytes` for a raw body, `str` for
    text/plain). `errors`: status → the error codes it can carry; a route with `auth` also
    carries STORE_ERRORS (added by `document`). `auth`: the user's bearer token (checked by the
    auth middleware against the metadata store); `scheme`: instead, a token of its own that the
    handler checks (the security scheme's name in the document).
    """

    method: str
    path: str
    handler: Handler
    name: str
    summary: str
    responses: dict[int, tuple[str, Any]]
    errors: dict[int, str] = field(default_factory=dict)
    params: tuple[Param, ...] = ()
    body: type[msgspec.Struct] | None = None
    body_optional: bool = False
    raw_body: bool = False
    raw_type: str = OCTET
    parse: Callable[[bytes], Any] | None = None
    links: tuple[Link, ...] = ()
    auth: bool = True
    scheme: str | None = None


# ---- decoding ----------------------------------------------------------------------------------
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_HUMAN = {
    "`str`": "a string",
    "`int`": "an integer",
    "`float`": "a number",
    "`bool`": "true or false",
    "`array`": "a list",
    "`object`": "a JSON object",
    "`null`": "null",
    "`int | null`": "an integer or null",
    "`str | null`": "a string or null",
    "`int | str`": "a node id or a label",
}


def _humane(reason: str) -> str:
    for word, human in _HUMAN.items():
        reason = reason.replace(word, human)
    if reason.startswith("Expected "):
        reason = "must be " + reason[len("Expected ") :]
    return reason


def _type_at(model: type[msgspec.Struct], parts: list[str | int]) -> Any:
    """The msgspec.inspect type at a decode error's path (None if the path leaves the model)."""
    info: Any = msgspec.inspect.type_info(model)
    for part in parts:
        while isinstance(info, msgspec.inspect.Metadata):  # a description or schema extra
            info = info.type
        if isinstance(info, msgspec.inspect.UnionType):
            real = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
            info = real[0] if len(real) == 1 else None
        if isinstance(part, int):
            if isinstance(info, msgspec.inspect.ListType | msgspec.inspect.VarTupleType):
                info = info.item_type
            elif isinstance(info, msgspec.inspect.TupleType) and part < len(info.item_types):
                info = info.item_types[part]
            else:
                return None
        elif isinstance(info, msgspec.inspect.StructType):
            info = next((f.type for f in info.fields if f.encode_name == part), None)
        else:
            return None
    return info


def _is_block_id(info: Any) -> bool:
    while isinstance(info, msgspec.inspect.Metadata):
        if (info.extra_json_schema or {}).get("pattern") == BLOCK_ID_PATTERN:
            return True
        info = info.type
    return isinstance(info, msgspec.inspect.StrType) and info.pattern == BLOCK_ID_PATTERN


def _value_at(raw: bytes, parts: list[str | int]) -> object:
    """The offending value, for the message only (any failure: no value)."""
    try:
        value: Any = msgspec.json.decode(raw)
        for part in parts:
            value = value[part]
    except (msgspec.DecodeError, RecursionError, LookupError, TypeError):
        return None
    return value


def _bad_request(
    model: type[msgspec.Struct], raw: bytes, exc: msgspec.ValidationError, subject: str
) -> Exception:
    """A msgspec validation error → our 400 naming the field (bad_block_id for block ids)."""
    reason, _, where = str(exc).partition(" - at `")
    path = where.rstrip("`")
    parts: list[str | int] = [
        int(index) if index else key for key, index in _PATH_PART.findall(path[1:])
    ]
    dotted = re.sub(r"^\.", "", path[1:]) if path else ""
    info = _type_at(model, parts)
    if _is_block_id(info):
        value = _value_at(raw, parts)
        return BadBlockIdError(
            f"block id {str(value)[:80]!r} at '{dotted}' is not 64 lowercase hex characters"
        )
    found = re.fullmatch(r"Object (missing required|contains unknown) field `(.+)`", reason)
    if found:
        name = f"{dotted}.{found[2]}" if dotted else found[2]
        if found[1] == "missing required":
            return BadRequestError(f"missing field '{name}'")
        hint = getattr(model, "UNKNOWN_FIELD_HINTS", {}).get(name)
        return BadRequestError(hint or f"unknown field '{name}'")
    if not dotted:
        return BadRequestError(f"{subject}{_humane(reason)}")
    if isinstance(info, msgspec.inspect.LiteralType):
        allowed = ", ".join(repr(v) for v in info.values)
        return BadRequestError(f"'{dotted}' must be one of {allowed}")
    return BadRequestError(f"'{dotted}' {_humane(reason)}")


def decode(
    model: type[msgspec.Struct],
    raw: bytes,
    decoder: msgspec.json.Decoder[Any] | None = None,
    subject: str = "request body ",
) -> Any:
    """Decode and check a JSON body (`decoder`: one made for `model`, reused; `subject`
    starts messages about the whole value). Raises:
    BadRequestError (and subclasses from the models' post-decode checks). Nesting cannot
    recurse: every field is typed, so a wrong `[` or `{` fails at once."""
    try:
        return (decoder or msgspec.json.Decoder(model)).decode(raw)
    except msgspec.ValidationError as exc:
        raise _bad_request(model, raw, exc, subject) from None
    except msgspec.DecodeError as exc:
        detail = str(exc).removeprefix("JSON is malformed: ")
        if "surrogate" in detail:
            detail += " (a lone surrogate is not valid UTF-8)"
        raise BadRequestError(f"request body is not valid JSON: {detail}") from None
    except RecursionError:
        raise BadRequestError("request body is nested too deeply") from None


async def read_body(request: web.Request, route: Route, decoder: msgspec.json.Decoder[Any]) -> Any:
    """The request's body decoded into `route.body`. Raises: BadRequestError, aiohttp 413."""
    assert route.body is not None
    raw = await request.read()
    if not raw.strip():
        if route.body_optional:
            return route.body()
        raise BadRequestError("request body must be a JSON object")
    parse = route.parse or functools.partial(decode, route.body, decoder=decoder)
    if len(raw) > BIG_JSON_BYTES:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, parse, raw)
    return parse(raw)


def answer(value: msgspec.Struct, status: int = 200) -> web.Response:
    """A JSON answer from a response model."""
    return web.Response(body=msgspec.json.encode(value), status=status, content_type=JSON)


def _bind(route: Route) -> Handler:
    """The handler aiohttp calls: for routes with a body model, decode it first."""
    if route.body is None:
        return route.handler
    decoder = msgspec.json.Decoder(route.body)  # made once per route, not per request

    @functools.wraps(route.handler)
    async def handler(request: web.Request) -> web.StreamResponse:
        return await route.handler(request, await read_body(request, route, decoder))

    return handler


ROUTE_TABLE: web.AppKey[list[Route]] = web.AppKey("route_table", list)
OPENAPI_DOC = web.AppKey("openapi_doc", bytes)


def register(app: web.Application, routes: Iterable[Route]) -> None:
    """Add `routes` to the app's router and to the table the OpenAPI document is made from."""
    table = app.setdefault(ROUTE_TABLE, [])
    for route in routes:
        if route.method == "GET":
            app.router.add_get(route.path, _bind(route), name=route.name, allow_head=False)
        else:
            app.router.add_route(route.method, route.path, _bind(route), name=route.name)
        table.append(route)


# ---- the OpenAPI document ----------------------------------------------------------------------
def _doc_path(path: str) -> str:
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def _without_prefix_items(schema: Any) -> Any:
    """Tuples as `items: {anyOf: [...]}` with a fixed length instead of `prefixItems`.

    Why: schemathesis 4 rewrites `prefixItems` to draft-4 `items: [...]` before checking
    answers against the 3.1 meta-schema and then refuses the schema. The decoder still checks
    each position; the document says the order in `description`.
    """
    if isinstance(schema, list):
        return [_without_prefix_items(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _without_prefix_items(v) for k, v in schema.items()}
    if "prefixItems" in out:
        out["items"] = {"anyOf": out.pop("prefixItems")}
    return out


def _content(model: Any, ref: Callable[[Any], J], raw_type: str = OCTET) -> J:
    if model is bytes:
        return {raw_type: {"schema": {"type": "string", "format": "binary"}}}
    if model is str:
        return {TEXT: {"schema": {"type": "string"}}}
    return {JSON: {"schema": ref(model)}}


AUTH_ERROR = (401, "unauthorized")
# What any route that touches the stores can answer, whatever it does: the token check alone
# reads the metadata store. 503: a store's service is unreachable (PostgreSQL, S3, every mirror
# member), with Retry-After. 507: the server's disk is full (SQLite, block files, device store).
STORE_ERRORS = {503: "store_unavailable", 507: "server_full"}
# Headers an error status always carries (StoreUnavailableError.headers()).
RETRY_AFTER: J = {
    "Retry-After": {
        "description": "seconds to wait before retrying (also `retry_after_s` in the body)",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
ERROR_HEADERS: dict[int, J] = {429: RETRY_AFTER, 503: RETRY_AFTER}


def _add_codes(errors: dict[int, str], status: int, codes: str) -> None:
    """Merge `codes` into errors[status] ("a, b" lists), without repeating a code."""
    if status not in errors:
        errors[status] = codes
        return
    have = [c.strip().split(" ")[0] for c in errors[status].split(",")]
    new = [c for c in codes.split(", ") if c.split(" ")[0] not in have]
    if new:
        errors[status] = ", ".join([errors[status], *new])


def document(routes: Iterable[Route], title: str = "cloudfs API", version: str = "1") -> J:
    """The OpenAPI 3.1 document of `routes`: paths from the table, schemas from the models."""
    routes = list(routes)
    models: list[Any] = [Error]
    for route in routes:
        if route.body is not None:
            models.append(route.body)
        models.extend(m for _, m in route.responses.values() if m is not None and m is not bytes)
    schemas, components = msgspec.json.schema_components(
        models, ref_template="#/components/schemas/{name}"
    )
    components = _without_prefix_items(components)
    refs = dict(zip(map(id, models), schemas, strict=True))

    def ref(model: Any) -> J:
        return refs[id(model)]

    paths: J = {}
    schemes: J = {"bearer": {"type": "http", "scheme": "bearer"}}
    for route in routes:
        responses: J = {}
        for status, (description, model) in route.responses.items():
            resp: J = {"description": description}
            if model is not None:
                resp["content"] = _content(model, ref)
            responses[str(status)] = resp
        errors = dict(route.errors)
        if route.auth:
            _add_codes(errors, *AUTH_ERROR)
            for status, codes in STORE_ERRORS.items():
                _add_codes(errors, status, codes)
        for param in route.params:
            if param.error is not None:
                status, codes = param.error
                errors[status] = f"{errors[status]}, {codes}" if status in errors else codes
        for status, codes in sorted(errors.items()):
            responses[str(status)] = {
                "description": f"error: {codes}",
                "content": _content(Error, ref),
            }
            if status in ERROR_HEADERS:
                responses[str(status)]["headers"] = ERROR_HEADERS[status]
        for link in route.links:
            spec: J = {"operationId": link.operation, "parameters": link.parameters}
            if link.body is not None:
                spec["requestBody"] = link.body
            responses[str(link.status)].setdefault("links", {})[link.name or link.operation] = spec
        op: J = {"operationId": route.name, "summary": route.summary, "responses": responses}
        params = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required or p.where == "path",
                "description": p.description,
                "schema": p.schema,
            }
            for p in route.params
        ]
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {
                "required": not route.body_optional,
                "content": _content(route.body, ref),
            }
        elif route.raw_body:
            content = _content(bytes, ref, route.raw_type)
            op["requestBody"] = {"required": True, "content": content}
        if route.auth:
            op["security"] = [{"bearer": []}]
        elif route.scheme is not None:
            op["security"] = [{route.scheme: []}]
            schemes[route.scheme] = {"type": "http", "scheme": "bearer"}
        else:
            op["security"] = []
        paths.setdefault(_doc_path(route.path), {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Generated from the server's route tables and models; the human "
            "contract is docs/protocol.md.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": schemes,
        },
    }


async def publish_document(app: web.Application) -> None:
    """on_startup: the document of every registered route, encoded once (the app is complete
    by then, whichever modules added routes)."""
    routes: list[Route] = app[ROUTE_TABLE]
    app[OPENAPI_DOC] = msgspec.json.encode(document(routes))
