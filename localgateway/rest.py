"""The REST API: every plain HTTP request as a proxy integration event (payload format 1.0),
and the handler's result back as the HTTP response.

A WebSocket ``$connect`` is an HTTP request too: it gets the same headers, and a refused
upgrade is answered with the handler's response the same way.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from localgateway.aws import INTERNAL_ERROR, TIMED_OUT, client, multi

if TYPE_CHECKING:
    from localgateway.gateway import LocalGateway

logger = logging.getLogger(__name__)

_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}


async def handle(gateway: LocalGateway, request: web.Request) -> web.Response:
    body = await request.read()
    path = request.raw_path.split("?", 1)[0]
    resource = "/" if path == "/" else "/{proxy+}"
    headers, multi_headers = multi(forwarded_headers(request, gateway.port))
    query, multi_query = multi(request.query.items())
    assert gateway.zappa is not None
    # With binary_support Zappa registers binaryMediaTypes */*, so API Gateway
    # base64-encodes every body.
    encoded = bool(body) and gateway.zappa.binary_support
    text = base64.b64encode(body).decode() if encoded else body.decode(errors="replace")
    event = {
        "resource": resource,
        "path": path,  # without the stage, so Zappa builds URLs at the root
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": None if path == "/" else {"proxy": request.path[1:]},
        "stageVariables": None,
        "requestContext": gateway.request_context(
            *client(request),
            requestId=str(uuid.uuid4()),
            resourceId="local",
            resourcePath=resource,
            httpMethod=request.method,
            path=path,
            protocol=f"HTTP/{request.version.major}.{request.version.minor}",
            accountId="123456789012",
        ),
        "body": text or None,
        "isBase64Encoded": encoded,
    }
    try:
        result = await gateway.invoke(event)
    except TimeoutError:
        return web.json_response(TIMED_OUT, status=504)
    except Exception:
        logger.exception("localgateway: %s %s failed", request.method, path)
        result = None
    if not isinstance(result, dict) or "statusCode" not in result:
        return web.json_response(INTERNAL_ERROR, status=502)
    response = lambda_response(result, request)
    response.headers["x-amzn-RequestId"] = event["requestContext"]["requestId"]
    return response


def forwarded_headers(request: web.Request, port: int) -> list[tuple[str, str]]:
    """Client headers plus API Gateway's, presented as if they came over HTTPS.

    Zappa forces ``wsgi.url_scheme`` to https, as on AWS, so the gateway plays TLS
    terminator: its own origin in Origin/Referer becomes https, or Django's CSRF check
    would refuse every browser POST.
    """
    plain, forwarded_for = f"http://{request.host}", request.remote or "127.0.0.1"
    headers: list[tuple[str, str]] = []
    for key, value in request.headers.items():
        lower = key.lower()
        if lower == "x-forwarded-for":
            forwarded_for = f"{value}, {forwarded_for}"
            continue
        if lower in ("x-forwarded-port", "x-forwarded-proto"):
            continue
        if lower in ("origin", "referer") and (value + "/").startswith(plain + "/"):
            value = "https" + value[4:]
        # Zappa looks up headers["Host"], case-sensitively.
        headers.append(("Host" if lower == "host" else key, value))
    trace = f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
    return [
        *headers,
        ("X-Amzn-Trace-Id", trace),
        ("X-Forwarded-For", forwarded_for),
        ("X-Forwarded-Port", str(port)),
        ("X-Forwarded-Proto", "https"),
    ]


def status_of(result: Any) -> int:
    if isinstance(result, dict) and "statusCode" in result:
        try:
            return int(result["statusCode"])
        except (TypeError, ValueError):
            return 502  # what API Gateway answers for a malformed proxy response
    return 200  # Zappa already turns a handler's None into 200


def lambda_response(result: dict[str, Any], request: web.Request) -> web.Response:
    # API Gateway merges both maps, the lists winning. Repeated identical lines are
    # dropped: Zappa 0.63's middleware adds a lower-case copy of every Set-Cookie.
    lists = result.get("multiValueHeaders") or {}
    pairs = [(k, str(v)) for k, values in lists.items() for v in values]
    listed = {k.lower() for k in lists}
    single = (result.get("headers") or {}).items()
    pairs += [(k, str(v)) for k, v in single if k.lower() not in listed]
    headers: CIMultiDict[str] = CIMultiDict()
    seen: set[tuple[str, str]] = set()
    for key, value in pairs:
        if key.lower() not in _HOP_BY_HOP and (key.lower(), value) not in seen:
            seen.add((key.lower(), value))
            headers.add(key, value)
    # The reverse of the https presentation in forwarded_headers: a redirect to the
    # gateway's own origin has to stay on plain http.
    location = headers.get("Location", "")
    if location.startswith(f"https://{request.host}"):
        headers["Location"] = "http" + location[5:]
    body = result.get("body") or ""
    b64 = result.get("isBase64Encoded")
    data = base64.b64decode(body) if b64 else str(body).encode()
    return web.Response(status=status_of(result), body=data, headers=headers)
