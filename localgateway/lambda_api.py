"""Lambda's Invoke API (``POST /2015-03-31/functions/{name}/invocations``): what Zappa's
``@task`` calls, through ``AWS_ENDPOINT_URL_LAMBDA``, so that a task runs as an asynchronous
invocation here as it would on AWS."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web

from localgateway.aws import aws_error

if TYPE_CHECKING:
    from localgateway.gateway import LocalGateway


async def handle(gateway: LocalGateway, request: web.Request, name: str) -> web.Response:
    assert gateway.zappa is not None
    # A name, an ARN or a partial ARN, optionally with a qualifier.
    function = name.rsplit(":function:", 1)[-1].split(":")[0]
    if function != gateway.zappa.lambda_name:
        message = f"Function not found: {name}"
        return aws_error(404, "ResourceNotFoundException", message)
    try:
        event = json.loads(await request.read() or b"{}")
    except ValueError:
        return aws_error(400, "InvalidRequestContentException", "Could not parse JSON")
    kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
    timeout = float(gateway.zappa.timeout_seconds)
    if kind == "Event":  # queued: answered at once, run in a container if there are any
        gateway.spawn(gateway.invoke_logged(event, timeout, asynchronous=True))
        return web.Response(status=202)
    if kind == "DryRun":
        return web.Response(status=204)
    try:
        result = await gateway.invoke(event, timeout)
    except TimeoutError:
        return web.json_response({"errorMessage": "Task timed out"}, status=200)
    except Exception as exc:
        error = {"errorMessage": str(exc), "errorType": type(exc).__name__}
        headers = {"X-Amz-Function-Error": "Unhandled"}
        return web.json_response(error, headers=headers)
    return web.Response(body=json.dumps(result).encode(), content_type="application/json")
