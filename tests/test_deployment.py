"""The deployment's small tools: CHAT_WS_URL into the stage's remote_env, and the settings
checks of what a Lambda stage needs."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from chat.apps import check_settings
from chatsite import deployment


class FakeS3:
    class exceptions:
        class NoSuchKey(Exception):
            pass

    def __init__(self, files: dict[tuple[str, str], bytes]) -> None:
        self.files = files

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        if (Bucket, Key) not in self.files:
            raise self.exceptions.NoSuchKey(Key)
        return {"Body": io.BytesIO(self.files[(Bucket, Key)])}

    def put_object(self, Bucket: str, Key: str, Body: bytes, ContentType: str) -> None:
        assert ContentType == "application/json"
        self.files[(Bucket, Key)] = Body


def test_the_websocket_url_is_merged_into_the_remote_env_file() -> None:
    s3 = FakeS3({("cfg", "dev.json"): json.dumps({"SECRET_KEY": "s"}).encode()})
    url = "wss://abc123.execute-api.us-east-1.amazonaws.com/dev"
    deployment.save_in_remote_env("s3://cfg/dev.json", {"CHAT_WS_URL": url}, s3)
    assert json.loads(s3.files[("cfg", "dev.json")]) == {"SECRET_KEY": "s", "CHAT_WS_URL": url}
    deployment.save_in_remote_env("s3://cfg/new.json", {"CHAT_WS_URL": url}, s3)  # no file yet
    assert json.loads(s3.files[("cfg", "new.json")]) == {"CHAT_WS_URL": url}
    with pytest.raises(SystemExit):
        deployment.save_in_remote_env("cfg/dev.json", {}, s3)


def test_a_lambda_stage_is_warned_about_what_it_lacks(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "chat-dev")
    settings.CHAT_WS_URL = ""
    settings.CHAT_POLL_WAIT = "database"
    settings.CHAT_FANOUT_BACKENDS = ["chat.apigateway.ApiGatewayBackend"]
    assert {"chat.W002", "chat.W003"} <= {m.id for m in check_settings()}
    settings.CHAT_WS_URL = "wss://abc123.execute-api.us-east-1.amazonaws.com/dev"
    settings.CHAT_FANOUT_BACKENDS = [
        "chat.apigateway.ApiGatewayBackend",
        "chat.fanout.PostgresNotifyBackend",
    ]
    assert not {"chat.W002", "chat.W003"} & {m.id for m in check_settings()}


def test_the_lambda_stages_name_the_notify_backend() -> None:
    stages = json.loads(
        (deployment.Path(__file__).parent.parent / "zappa_settings.json").read_text()
    )
    for name, stage in stages.items():
        backends = stage["environment_variables"]["CHAT_FANOUT_BACKENDS"].split(",")
        assert "chat.fanout.PostgresNotifyBackend" in backends, name
