"""A local stand-in for API Gateway in front of the real Zappa Lambda handler.

One aiohttp server plays both APIs of a Zappa deployment: the WebSocket API (sockets at ``/ws/``
or ``/{stage}``, plus the ``@connections`` management API at ``/{stage}/@connections/{id}``) and
the REST API (every other request, as a 1.0 proxy event, served at the root), and serves
Django's static files itself, as S3 would for a deployment. Each event goes through
``zappa.handler.lambda_handler`` on a thread pool, concurrently as on Lambda, with the
``zappa_settings`` module ``zappa package`` would generate. It also answers Lambda's Invoke API
(``/2015-03-31/functions/{name}/invocations``), so Zappa's ``@task`` runs as an asynchronous
invocation here as it would on AWS: in separate container processes (``--task-processes``),
since on Lambda each is a container of its own and sharing the gateway's GIL would slow a large
room's fan-out batches down together.

Run it as ``python -m localgateway`` (``manage.py localgateway`` hands over to that): the
Lambda side has to import Django itself, after the stage's ``environment_variables`` and the
gateway's URLs are in the environment, as on Lambda; a process that has already loaded Django
settings would keep its own. Development only: the Lambda code never imports this package,
and ``zappa_settings.json`` leaves it out of the zip.

- ``stages.py``: the stage's settings, as ``zappa package`` would write them
- ``runtime.py``: Zappa's handler in this process (cold start, one invocation, its context)
- ``containers.py``: worker processes for asynchronous invocations
- ``gateway.py``: ``LocalGateway`` (options, start and stop, dispatch) and ``GatewayThread``
- ``websocket.py``, ``connections.py``, ``rest.py``, ``lambda_api.py``: one API each
- ``static.py``: ``STATIC_URL`` from Django's staticfiles finders
- ``aws.py``: API Gateway's quotas and the shapes its APIs share
- ``cli.py``: the command line
"""

from localgateway.gateway import GatewayThread, LocalGateway
from localgateway.stages import ZappaStage, load_stage

__all__ = ["GatewayThread", "LocalGateway", "ZappaStage", "load_stage"]
