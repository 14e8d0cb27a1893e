"""The template `zappa deploy` creates, WebSocket API included, built offline and checked with
cfn-lint (`python -m chatsite.deployment template STAGE`; `zappa template` leaves the WebSocket
API out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.timeout(300)]


def offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_EC2_METADATA_DISABLED="true",  # nothing may reach for credentials
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
    )
    return env


@pytest.mark.parametrize("stage", ["dev", "production"])
def test_the_deploy_template_has_the_websocket_api_and_passes_cfn_lint(
    tmp_path: Path, stage: str
) -> None:
    out = tmp_path / f"chat-{stage}-template.json"
    env = offline_env(tmp_path)
    made = subprocess.run(
        [sys.executable, "-m", "chatsite.deployment", "template", stage, "-o", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    resources = json.loads(out.read_text())["Resources"]
    kinds = sorted(resource["Type"] for resource in resources.values())
    assert kinds.count("AWS::ApiGatewayV2::Route") == 3
    assert {"AWS::ApiGatewayV2::Api", "AWS::ApiGatewayV2::Integration"} <= set(kinds)
    assert {"AWS::ApiGatewayV2::Stage", "AWS::Lambda::Permission"} <= set(kinds)
    assert "AWS::ApiGateway::RestApi" in kinds  # the HTTP side, as `zappa template` has it
    routes = {
        r["Properties"]["RouteKey"] for r in resources.values() if r["Type"].endswith("Route")
    }
    assert routes == {"$connect", "$disconnect", "$default"}
    [stage_resource] = [r for r in resources.values() if r["Type"] == "AWS::ApiGatewayV2::Stage"]
    assert stage_resource["Properties"]["StageName"] == stage
    [permission] = [r for r in resources.values() if r["Type"] == "AWS::Lambda::Permission"]
    assert permission["Properties"]["FunctionName"].endswith(f":function:chat-{stage}")

    lint = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    # cfn-lint's exit code is a bit field: 2 for errors (4 warnings, 8 informational).
    assert not lint.returncode & 2 and lint.returncode in (0, 4, 8, 12), lint.stdout + lint.stderr
    assert ":E" not in lint.stdout, lint.stdout
