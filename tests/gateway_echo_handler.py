"""A tiny Lambda app for tests/test_localgateway.py: Zappa WebSocket handlers and a WSGI app.

Every WebSocket event it receives is recorded in ``EVENTS`` so tests can check the shapes the
gateway builds; ``wait_for`` lets a test block until an event has arrived instead of sleeping.
Frames are JSON ``{"action": ..., ...}``; replies go back through the real @connections API.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from typing import Any
from urllib.parse import parse_qs

import boto3
from zappa.websocket import on_connect, on_disconnect, on_message

EVENTS: list[dict[str, Any]] = []
_changed = threading.Condition()
_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()
BARRIER = threading.Barrier(2, timeout=5)


def wait_for(predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
    """Block until an event matching ``predicate`` has been recorded; returns it."""
    with _changed:
        found: list[dict[str, Any]] = []

        def match() -> bool:
            found[:] = [e for e in EVENTS if predicate(e)]
            return bool(found)

        if not _changed.wait_for(match, timeout):
            raise TimeoutError("no matching event recorded")
        return found[0]


def _record(event: dict[str, Any]) -> None:
    with _changed:
        EVENTS.append(event)
        _changed.notify_all()


def management_client(event: dict[str, Any]) -> Any:
    """The client the app builds, from the event (or the URL the gateway exported)."""
    rc = event["requestContext"]
    endpoint = os.environ.get("GATEWAY_TEST_MANAGEMENT_URL") or (
        f"http://{rc['domainName']}/{rc['stage']}"
    )
    with _clients_lock:  # boto3 client creation is not thread-safe; clients are
        if endpoint not in _clients:
            _clients[endpoint] = boto3.client(
                "apigatewaymanagementapi",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
        return _clients[endpoint]


def post(event: dict[str, Any], payload: Any) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    connection_id = event["requestContext"]["connectionId"]
    management_client(event).post_to_connection(ConnectionId=connection_id, Data=data)


@on_connect
def connect(event: dict[str, Any], context: Any) -> dict[str, Any]:
    _record(event)
    if (event.get("queryStringParameters") or {}).get("token") == "bad":
        return {"statusCode": 401, "body": "bad token"}
    return {"statusCode": 200}


@on_disconnect
def disconnect(event: dict[str, Any], context: Any) -> dict[str, Any]:
    _record(event)
    return {"statusCode": 200}


@on_message
def message(event: dict[str, Any], context: Any) -> dict[str, Any]:
    event = {**event, "remaining_ms": context.get_remaining_time_in_millis()}
    _record(event)
    if event.get("isBase64Encoded"):
        post(event, {"binary": event["body"]})
        return {"statusCode": 200}
    frame = json.loads(event["body"])
    action = frame.get("action")
    if action == "echo":
        connection_id = event["requestContext"]["connectionId"]
        reply = {"echo": frame.get("data"), "connectionId": connection_id}
        post(event, {**reply, "function": context.function_name})
    elif action == "raw":
        post(event, frame["data"].encode())
    elif action == "reply":
        return {"statusCode": 200, "body": json.dumps({"reply": frame.get("data")})}
    elif action == "fail":
        raise RuntimeError("handler failed on purpose")
    elif action == "sleep":
        time.sleep(frame["seconds"])
    elif action == "barrier":
        BARRIER.wait()  # only returns if another invocation runs at the same time
        post(event, {"barrier": frame.get("data")})
    return {"statusCode": 200}


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The REST side: enough routes to check what Zappa hands a WSGI app and returns."""
    path = environ["PATH_INFO"]
    if path == "/cookies":
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Set-Cookie", "a=1; Path=/"),
                ("Set-Cookie", "b=2; Path=/; HttpOnly"),
            ],
        )
        return [b"two cookies"]
    if path == "/redirect":
        start_response("302 Found", [("Location", "/target")])
        return [b""]
    if path == "/absolute-redirect":
        location = f"{environ['wsgi.url_scheme']}://{environ['HTTP_HOST']}/target"
        start_response("302 Found", [("Location", location)])
        return [b""]
    if path == "/png":
        body = bytes(range(256))
        start_response("200 OK", [("Content-Type", "image/png")])
        return [body]
    if path == "/boom":
        raise RuntimeError("WSGI app failed on purpose")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    info = {
        "method": environ["REQUEST_METHOD"],
        "path": path,
        "script_name": environ.get("SCRIPT_NAME", ""),
        "query": parse_qs(environ.get("QUERY_STRING", "")),
        "scheme": environ["wsgi.url_scheme"],
        "host": environ.get("HTTP_HOST"),
        "origin": environ.get("HTTP_ORIGIN"),
        "remote_addr": environ.get("REMOTE_ADDR"),
        "cookie": environ.get("HTTP_COOKIE"),
        "body_b64": base64.b64encode(body).decode(),
        "event_path": environ["lambda.event"]["path"],
        "request_context": environ["lambda.event"]["requestContext"],
        "path_parameters": environ["lambda.event"]["pathParameters"],
    }
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(info).encode()]
