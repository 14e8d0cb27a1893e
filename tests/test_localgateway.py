"""The local API Gateway, driven through real sockets against Zappa's real handler.

The Lambda app is tests/gateway_echo_handler.py (no Django, no database). It records every
WebSocket event it gets, so the tests check the event shapes, and it answers through the real
@connections API with boto3, as the chat's own handlers will. The static-file tests use the
project's own stage instead, in `python -m localgateway`, since those files are Django's.
"""

import asyncio
import base64
import http.client
import json
import os
import random
import re
import select
import signal
import time

import aiohttp
import boto3
import pytest
import pytest_asyncio
import websockets
from botocore.config import Config
from botocore.exceptions import ReadTimeoutError
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as sync_connect

from localgateway import GatewayThread, LocalGateway, load_stage
from tests import gateway_echo_handler as echo
from tests.conftest import ROOT

pytestmark = [pytest.mark.timeout(60)]

SETTINGS = {
    "dev": {
        "app_function": "tests.gateway_echo_handler.wsgi_app",
        "websocket_handler_module": "tests.gateway_echo_handler",
        "project_name": "gwtest",
        "aws_region": "us-east-1",
        "log_level": "WARNING",
        "debug": False,
        "environment_variables": {"GATEWAY_TEST_VAR": "dev"},
    },
    "prod": {
        "extends": "dev",
        "slim_handler": True,
        "aws_environment_variables": {"FROM_AWS": "1", "GATEWAY_TEST_VAR": "aws"},
        "environment_variables": {"GATEWAY_TEST_VAR": "prod"},
    },
}
ID = re.compile(r"[A-Za-z0-9]{15}=")


@pytest.fixture(scope="module")
def settings_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gateway") / "zappa_settings.json"
    path.write_text(json.dumps(SETTINGS))
    return path


@pytest_asyncio.fixture
async def make_gateway(settings_file):
    started = []

    async def make(**options):
        gateway = LocalGateway(settings_file, "dev", **options)
        await gateway.start()
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        await gateway.stop()


@pytest_asyncio.fixture
async def gateway(make_gateway):
    return await make_gateway()


def management(gateway, **config):
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=gateway.management_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(**config) if config else None,
    )


def connect(gateway, query="token=ok", **options):
    return websockets.connect(f"{gateway.ws_url}?{query}", proxy=None, **options)


async def hello(ws, data="hi"):
    """Round trip through $default and post_to_connection; returns the connection id."""
    await ws.send(json.dumps({"action": "echo", "data": data}))
    reply = json.loads(await ws.recv())
    assert reply["echo"] == data
    return reply["connectionId"]


async def recorded(route, connection_id):
    def matches(event):
        context = event["requestContext"]
        return context["routeKey"] == route and context["connectionId"] == connection_id

    return await asyncio.to_thread(echo.wait_for, matches)


async def closed_with(ws):
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.recv()
    return closed.value.rcvd


# WebSocket events


@pytest.mark.asyncio
async def test_it_sends_connect_message_and_disconnect_events(gateway):
    domain = f"127.0.0.1:{gateway.port}"
    ws = await connect(
        gateway,
        "token=ok&room=lobby&room=main",
        origin=gateway.url,
        user_agent_header="pytest-agent",
    )
    connection_id = await hello(ws)
    assert ID.fullmatch(connection_id)
    assert connection_id in gateway.connection_ids()

    event = await recorded("$connect", connection_id)
    context = event["requestContext"]
    assert context["eventType"] == "CONNECT"
    assert context["domainName"] == domain
    assert context["stage"] == "dev"
    assert context["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "pytest-agent"}
    assert ID.fullmatch(context["requestId"])
    assert abs(context["connectedAt"] - time.time() * 1000) < 10_000
    assert event["queryStringParameters"] == {"token": "ok", "room": "main"}
    assert event["multiValueQueryStringParameters"]["room"] == ["lobby", "main"]
    assert event["headers"]["Host"] == domain
    assert event["headers"]["Origin"] == f"https://{domain}"  # presented as over TLS
    assert event["headers"]["X-Forwarded-Proto"] == "https"
    assert event["multiValueHeaders"]["User-Agent"] == ["pytest-agent"]

    event = await recorded("$default", connection_id)
    assert event["requestContext"]["eventType"] == "MESSAGE"
    assert event["requestContext"]["connectedAt"] == context["connectedAt"]
    assert ID.fullmatch(event["requestContext"]["messageId"])
    assert event["body"] == json.dumps({"action": "echo", "data": "hi"})
    assert event["isBase64Encoded"] is False
    assert 0 < event["remaining_ms"] <= 30_000  # the context object's deadline

    await ws.close(code=4000, reason="bye")
    event = await recorded("$disconnect", connection_id)
    assert event["requestContext"]["eventType"] == "DISCONNECT"
    assert event["requestContext"]["disconnectStatusCode"] == 4000
    assert event["requestContext"]["disconnectReason"] == "bye"
    assert event["headers"]["Host"] == domain


@pytest.mark.asyncio
async def test_it_refuses_the_upgrade_with_the_connect_handlers_status(gateway):
    with pytest.raises(InvalidStatus) as refused:
        await connect(gateway, "token=bad")
    assert refused.value.response.status_code == 401
    assert refused.value.response.body == b"bad token"
    assert gateway.connection_ids() == []


@pytest.mark.asyncio
async def test_it_forwards_binary_frames_base64_encoded(gateway):
    async with connect(gateway) as ws:
        await ws.send(b"\x00\xffbinary")
        reply = json.loads(await ws.recv())
    assert base64.b64decode(reply["binary"]) == b"\x00\xffbinary"


@pytest.mark.asyncio
async def test_invocations_run_concurrently(gateway):
    echo.BARRIER.reset()
    async with connect(gateway) as ws:
        for n in (
            1,
            2,
        ):  # each waits at a two-party barrier: only concurrency frees them
            await ws.send(json.dumps({"action": "barrier", "data": n}))
        replies = {json.loads(await ws.recv())["barrier"] for _ in (1, 2)}
    assert replies == {1, 2}


async def invoke_event(gateway, event):
    """Lambda's Invoke API, as Zappa's @task calls it: an asynchronous invocation."""
    client = boto3.client(
        "lambda",
        endpoint_url=gateway.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    payload = json.dumps(event).encode()
    name = gateway.zappa.lambda_name
    return await asyncio.to_thread(
        client.invoke, FunctionName=name, InvocationType="Event", Payload=payload
    )


@pytest.mark.asyncio
async def test_asynchronous_invocations_run_in_container_processes(make_gateway):
    gateway = await make_gateway(task_processes=1)
    [first_pid] = gateway.container_pids()
    assert first_pid != os.getpid()
    async with connect(gateway) as ws:
        connection_id = await hello(ws)
        frame = await recorded("$default", connection_id)
        for n, data in enumerate(["from a container", "from its replacement"]):
            body = json.dumps({"action": "echo", "data": data})
            answer = await invoke_event(gateway, {**frame, "body": body})
            assert answer["StatusCode"] == 202
            reply = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert reply == {"echo": data, "connectionId": connection_id, "function": "gwtest-dev"}
            # The handler ran, and answered through @connections, in another process: this
            # one (where the synchronous invocations run) never recorded the frame.
            assert not [e for e in echo.EVENTS if e.get("body") == body]
            if n == 0:  # a container that dies is replaced when it is next needed
                pidfd = os.pidfd_open(first_pid)
                os.kill(first_pid, signal.SIGKILL)
                await asyncio.to_thread(select.select, [pidfd], [], [], 10)  # readable once dead
                os.close(pidfd)
    [second_pid] = gateway.container_pids()
    assert second_pid not in (None, first_pid)


@pytest.mark.asyncio
async def test_route_responses_are_dropped_unless_enabled(make_gateway):
    gateway = await make_gateway()
    async with connect(gateway) as ws:
        await ws.send(json.dumps({"action": "reply", "data": "dropped"}))
        await gateway.drain()
        assert await hello(ws, "next")  # the first frame back is the echo, not the reply

    gateway = await make_gateway(route_responses=True)
    async with connect(gateway) as ws:
        await ws.send(json.dumps({"action": "reply", "data": "sent"}))
        assert json.loads(await ws.recv()) == {"reply": "sent"}


@pytest.mark.asyncio
async def test_it_sends_api_gateways_error_frames(make_gateway):
    gateway = await make_gateway(integration_timeout=0.3)
    async with connect(gateway) as ws:
        connection_id = await hello(ws)
        await ws.send(json.dumps({"action": "fail"}))
        error = json.loads(await ws.recv())
        assert error["message"] == "Internal server error"
        assert error["connectionId"] == connection_id
        assert ID.fullmatch(error["requestId"])

        await ws.send(json.dumps({"action": "sleep", "seconds": 1}))
        error = json.loads(await ws.recv())
        assert error["message"] == "Endpoint request timed out"


# API Gateway's limits


@pytest.mark.asyncio
async def test_a_frame_over_32_kb_closes_with_1009(gateway):
    async with connect(gateway) as ws:
        connection_id = await hello(ws)
        await ws.send("x" * (32 * 1024 + 1))
        close = await closed_with(ws)
    assert (close.code, close.reason) == (1009, "Message too big")
    event = await recorded("$disconnect", connection_id)
    assert event["requestContext"]["disconnectStatusCode"] == 1009


@pytest.mark.asyncio
async def test_fragmented_messages_may_reach_128_kb(gateway):
    def fragments(size):
        frame = json.dumps({"action": "sleep", "seconds": 0, "pad": ""})
        text = frame[:-2] + "x" * (size - len(frame)) + frame[-2:]
        return [text[i : i + 32 * 1024] for i in range(0, size, 32 * 1024)]

    async with connect(gateway) as ws:
        connection_id = await hello(ws)
        await ws.send(fragments(128 * 1024))
        event = await asyncio.to_thread(
            echo.wait_for,
            lambda e: e["requestContext"]["connectionId"] == connection_id
            and len(e.get("body") or "") == 128 * 1024,
        )
        assert json.loads(event["body"])["action"] == "sleep"
        await hello(ws, "still open")

        await ws.send(fragments(128 * 1024 + 1))
        close = await closed_with(ws)
    assert close.code == 1009


@pytest.mark.asyncio
async def test_idle_connections_are_closed(make_gateway):
    gateway = await make_gateway(idle_timeout=0.3)
    async with connect(gateway) as ws:
        # Before the last client frame, which starts the idle clock when it arrives: the
        # round trip after it takes a while on a busy machine.
        started = time.monotonic()
        connection_id = await hello(ws)
        close = await closed_with(ws)
    assert close.code == 1001
    assert time.monotonic() - started >= 0.25
    event = await recorded("$disconnect", connection_id)
    assert event["requestContext"]["disconnectStatusCode"] == 1001


@pytest.mark.asyncio
async def test_connections_end_at_the_maximum_duration(make_gateway):
    gateway = await make_gateway(max_duration=0.5)
    async with connect(gateway) as ws:
        await hello(ws)
        close = await closed_with(ws)
    assert (close.code, close.reason) == (1001, "Going away")


# The @connections API


@pytest.mark.asyncio
async def test_boto3_posts_gets_and_deletes_connections(gateway):
    client = management(gateway)
    async with connect(gateway, user_agent_header="pytest-agent") as ws:
        connection_id = await hello(ws)

        await asyncio.to_thread(
            client.post_to_connection, ConnectionId=connection_id, Data=b'{"pushed": 1}'
        )
        assert json.loads(await ws.recv()) == {"pushed": 1}

        info = await asyncio.to_thread(client.get_connection, ConnectionId=connection_id)
        assert info["Identity"] == {
            "SourceIp": "127.0.0.1",
            "UserAgent": "pytest-agent",
        }
        assert info["ConnectedAt"] <= info["LastActiveAt"]

        await asyncio.to_thread(client.delete_connection, ConnectionId=connection_id)
        close = await closed_with(ws)
    assert close.code == 1000
    event = await recorded("$disconnect", connection_id)
    assert event["requestContext"]["disconnectStatusCode"] == 1000

    for call in (client.post_to_connection, client.get_connection):
        with pytest.raises(client.exceptions.GoneException):
            await asyncio.to_thread(
                call,
                ConnectionId=connection_id,
                **({"Data": b"x"} if call == client.post_to_connection else {}),
            )
    with pytest.raises(client.exceptions.GoneException) as gone:
        await asyncio.to_thread(client.delete_connection, ConnectionId="NoSuchConnect=")
    assert gone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410


@pytest.mark.asyncio
async def test_it_answers_like_aws_for_bad_calls(gateway):
    async with connect(gateway) as ws, aiohttp.ClientSession() as http:
        connection_id = await hello(ws)
        url = f"{gateway.management_url}/@connections/{connection_id}"

        async with http.post(url, data=b"x" * (128 * 1024 + 1)) as response:
            assert response.status == 413
            assert response.headers["x-amzn-ErrorType"] == "PayloadTooLargeException"
        async with http.post(url, data=b"y" * (128 * 1024)) as response:
            assert response.status == 200
        assert await ws.recv() == "y" * (128 * 1024)

        wrong_stage = url.replace("/dev/", "/prod/")
        async with http.post(wrong_stage, data=b"x") as response:
            assert response.status == 403
        async with http.get(f"{gateway.management_url}/@connections/Nope=") as response:
            assert response.status == 410
            assert response.headers["x-amzn-ErrorType"] == "GoneException"
            assert await response.json() == {"message": None}


@pytest.mark.asyncio
async def test_faults_can_be_injected_into_connections_calls(make_gateway):
    no_retries = {"retries": {"max_attempts": 1, "mode": "standard"}}
    gateway = await make_gateway(connections_faults={"429": 1.0})
    client = management(gateway, **no_retries)
    with pytest.raises(client.exceptions.LimitExceededException):
        await asyncio.to_thread(client.get_connection, ConnectionId="Whatever=")

    gateway = await make_gateway(connections_faults={"410": 1.0})
    client = management(gateway, **no_retries)
    async with connect(gateway):
        [connection_id] = gateway.connection_ids()  # open, yet every call answers 410
        with pytest.raises(client.exceptions.GoneException):
            await asyncio.to_thread(client.get_connection, ConnectionId=connection_id)

    gateway = await make_gateway(connections_faults={"hang": 1.0}, hang_seconds=5)
    client = management(gateway, read_timeout=0.3, **no_retries)
    with pytest.raises(ReadTimeoutError):
        await asyncio.to_thread(client.get_connection, ConnectionId="Whatever=")

    gateway = await make_gateway(connections_delay=0.2)
    client = management(gateway)
    started = time.monotonic()
    with pytest.raises(client.exceptions.GoneException):
        await asyncio.to_thread(client.get_connection, ConnectionId="Whatever=")
    assert time.monotonic() - started >= 0.2


@pytest.mark.asyncio
async def test_fault_draws_are_seeded(make_gateway):
    async def statuses(gateway):
        async with aiohttp.ClientSession() as http:
            url = f"{gateway.management_url}/@connections/Whatever="
            return [(await http.get(url)).status for _ in range(20)]

    options = {"connections_faults": {"429": 0.5}, "fault_seed": 7}
    first = await statuses(await make_gateway(**options))
    second = await statuses(await make_gateway(**options))
    rng = random.Random(7)
    assert first == second == [429 if rng.random() < 0.5 else 410 for _ in range(20)]
    assert {429, 410} == set(first)


# The REST proxy


@pytest.mark.asyncio
async def test_http_requests_become_rest_proxy_events(gateway):
    domain = f"127.0.0.1:{gateway.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{gateway.url}/some/path?a=1&a=2&b=x%20y", headers={"Origin": gateway.url}
        ) as response:
            assert response.status == 200
            assert "x-amzn-RequestId" in response.headers
            info = await response.json()
        async with http.get(f"{gateway.url}/") as response:
            root = await response.json()

    assert info["method"] == "GET"
    assert (info["path"], info["script_name"], info["event_path"]) == (
        "/some/path",
        "",
        "/some/path",
    )
    assert info["query"] == {"a": ["1", "2"], "b": ["x y"]}
    assert info["host"] == domain
    assert info["scheme"] == "https"  # Zappa's choice; the gateway keeps it consistent
    assert info["origin"] == f"https://{domain}"
    assert info["remote_addr"] == "127.0.0.1"
    assert info["path_parameters"] == {"proxy": "some/path"}
    context = info["request_context"]
    assert (context["stage"], context["domainName"], context["path"]) == (
        "dev",
        domain,
        "/some/path",
    )
    assert context["resourcePath"] == "/{proxy+}"
    assert context["identity"]["sourceIp"] == "127.0.0.1"
    assert (root["path"], root["path_parameters"]) == ("/", None)
    assert root["request_context"]["resourcePath"] == "/"


@pytest.mark.asyncio
async def test_http_bodies_cookies_and_redirects_survive_the_round_trip(gateway):
    payload = bytes(range(256)) * 4
    jar = aiohttp.CookieJar(unsafe=True)  # the default jar ignores IP-address hosts
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.post(f"{gateway.url}/upload", data=payload) as response:
            assert base64.b64decode((await response.json())["body_b64"]) == payload
        async with http.get(f"{gateway.url}/png") as response:
            assert response.headers["Content-Type"] == "image/png"
            assert await response.read() == bytes(range(256))
        async with http.get(f"{gateway.url}/cookies") as response:
            assert response.headers.getall("Set-Cookie") == [
                "a=1; Path=/",
                "b=2; Path=/; HttpOnly",
            ]
        async with http.get(f"{gateway.url}/echo") as response:
            assert (await response.json())["cookie"] == "a=1; b=2"
        async with http.get(f"{gateway.url}/redirect", allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (302, "/target")
        absolute = f"{gateway.url}/absolute-redirect"
        async with http.get(absolute, allow_redirects=False) as response:
            assert response.headers["Location"] == f"{gateway.url}/target"  # http again
        async with http.get(f"{gateway.url}/boom") as response:
            assert response.status == 500  # Zappa catches the app's exception itself


# Static files: on Lambda they come from S3; here the gateway serves them itself (the
# project's own stage, as `make serverless` runs it).


def get(url, path):
    """Status, Content-Type and body of a GET with the path sent exactly as written."""
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def test_it_serves_the_projects_static_files(serverless_proc):
    status, content_type, body = get(serverless_proc.url, "/static/chat/chat.css")
    assert (status, content_type) == (200, "text/css")
    assert body == (ROOT / "chat" / "static" / "chat" / "chat.css").read_bytes()
    status, content_type, _ = get(serverless_proc.url, "/static/admin/js/core.js")
    assert (status, content_type) == (200, "application/javascript")  # an app's own
    assert get(serverless_proc.url, "/static/chat/missing.css")[0] == 404
    assert get(serverless_proc.url, "/static/chat/")[0] == 404  # a folder is not a file


@pytest.mark.parametrize(
    "path",
    [
        "/static/../chatsite/settings.py",
        "/static/chat/../../chatsite/settings.py",
        "/static/%2e%2e/chatsite/settings.py",
        "/static/chat/..%2f..%2fchatsite%2fsettings.py",
        "/static/%2fetc/passwd",
    ],
)
def test_static_file_names_cannot_reach_outside_the_static_folders(serverless_proc, path):
    status, _, body = get(serverless_proc.url, path)
    assert status == 404
    assert b"SECRET_KEY" not in body and b"root:" not in body


# Settings and running


def test_the_settings_module_is_what_zappa_package_writes(settings_file):
    stage = load_stage(settings_file, "prod")
    source = stage.source
    assert source.startswith("# Generated by Zappa\n")
    assert "APP_MODULE='tests.gateway_echo_handler'\nAPP_FUNCTION='wsgi_app'\n" in source
    assert "WEBSOCKET_HANDLER_MODULE='tests.gateway_echo_handler'" in source
    assert "API_STAGE='prod'" in source
    assert "ENVIRONMENT_VARIABLES={'AWS_REGION': 'us-east-1', 'FROM_AWS': '1'" in source
    assert "'GATEWAY_TEST_VAR': 'prod'" in source
    assert "ARCHIVE_PATH" not in source and "SLIM_HANDLER" not in source
    assert stage.lambda_name == "gwtest-prod"
    with pytest.raises(ValueError):
        load_stage(settings_file, "staging")
    with pytest.raises(FileNotFoundError):
        load_stage(settings_file.parent / "missing.json", "dev")


@pytest.mark.asyncio
async def test_a_gateway_with_other_settings_starts_a_fresh_handler(make_gateway, monkeypatch):
    monkeypatch.setenv("GATEWAY_TEST_MANAGEMENT_URL", "")
    monkeypatch.setenv("GATEWAY_TEST_VAR", "")
    overrides = {"environment_variables": {"GATEWAY_TEST_VAR": "overridden"}}
    gateway = await make_gateway(
        settings_overrides=overrides, management_url_env="GATEWAY_TEST_MANAGEMENT_URL"
    )
    assert os.environ["GATEWAY_TEST_VAR"] == "overridden"
    assert os.environ["GATEWAY_TEST_MANAGEMENT_URL"] == gateway.management_url
    async with connect(gateway) as ws:
        await hello(ws)  # routes registered again after the reset, reply via the URL


def test_it_runs_in_a_background_thread_for_sync_code(settings_file):
    with GatewayThread(LocalGateway(settings_file, "dev")) as gateway:
        with sync_connect(f"{gateway.ws_url}?token=ok", proxy=None) as ws:
            ws.send(json.dumps({"action": "echo", "data": "sync"}))
            connection_id = json.loads(ws.recv(timeout=5))["connectionId"]
            management(gateway).post_to_connection(ConnectionId=connection_id, Data=b"pushed")
            assert ws.recv(timeout=5) == "pushed"
