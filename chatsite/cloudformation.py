"""The CloudFormation template that ``zappa deploy`` creates, offline.

``zappa template`` builds its template without ``websocket=``, so it leaves out the WebSocket API
(the API, its ``$connect`` / ``$disconnect`` / ``$default`` routes and integration, the
deployment and stage, and the permission for API Gateway to invoke the function) that
``zappa deploy`` creates for a stage with ``websocket_handler_module``. This builds the template
the way the deploy path does (``Zappa.create_stack_template(..., websocket=...)``), from
zappa_settings.json alone: no AWS call, no credentials. The function and role ARNs are the ones
``zappa deploy`` gives them, in the account given (a placeholder by default).

``python -m chatsite.deployment template STAGE [-o FILE] [--account ID]``; ``make template``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLACEHOLDER_ACCOUNT = "123456789012"


def deploy_template(
    stage: str,
    account: str = PLACEHOLDER_ACCOUNT,
    settings_file: str | Path = "zappa_settings.json",
) -> dict[str, Any]:
    import boto3
    from zappa.cli import ZappaCLI

    cli = ZappaCLI()
    cli.api_stage = stage
    cli.load_credentials = False  # no boto clients: nothing here talks to AWS
    cli.load_settings(str(settings_file))
    zappa = cli.zappa
    region = zappa.aws_region
    # Only its region is read (no client is made from it).
    zappa.boto_session = boto3.Session(region_name=region)
    role = cli.desired_role_arn or f"arn:aws:iam::{account}:role/{zappa.role_name}"
    zappa.credentials_arn = role
    lambda_arn = f"arn:aws:lambda:{region}:{account}:function:{cli.lambda_name}"
    # The same arguments as ZappaCLI.deploy's, websocket= included.
    template = zappa.create_stack_template(
        lambda_arn=lambda_arn,
        lambda_name=cli.lambda_name,
        api_key_required=cli.api_key_required,
        iam_authorization=cli.iam_authorization,
        authorizer=cli.authorizer,
        cors_options=cli.cors,
        description=cli.apigateway_description,
        endpoint_configuration=cli.endpoint_configuration,
        apigateway_version=cli.apigateway_version,
        stage_name=cli.api_stage,
        lambda_qualifier=cli.apigateway_lambda_qualifier,
        websocket=cli.use_websocket,
    )
    return json.loads(template.to_json())
