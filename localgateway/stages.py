"""A Zappa stage as ``zappa package`` would ship it: the ``zappa_settings.py`` module that the
handler imports on Lambda, and the function's name, region, memory and timeout.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Stage settings that ZappaCLI copies to attributes of the same name, with its defaults.
_CLI_SETTINGS = {
    **dict.fromkeys(
        "app_function app_type exception_handler domain base_path aws_region"
        " settings_file django_settings remote_env remote_env_bucket remote_env_file".split()
    ),
    "debug": True,
    "log_level": "DEBUG",
    "binary_support": True,
    "context_header_mappings": {},
    "authorizer": {},
}


@dataclass(frozen=True)
class ZappaStage:
    source: str  # the text of the generated zappa_settings.py
    lambda_name: str
    region: str
    timeout_seconds: int
    memory_size: int
    binary_support: bool
    websocket_module: str | None
    environment: Mapping[str, str] = field(default_factory=dict)  # what the handler exports


def load_stage(
    settings_file: str | os.PathLike[str],
    stage: str,
    overrides: Mapping[str, Any] | None = None,
) -> ZappaStage:
    """Build the ``zappa_settings.py`` that ``zappa package`` would put in the zip.

    Zappa's own ``get_zappa_settings_string`` writes it, from the attributes that
    ``ZappaCLI.load_settings`` sets; that method itself is not used because it calls STS.
    """
    import slugify
    from zappa.cli import ZappaCLI

    path = Path(settings_file).resolve()
    if not path.is_file():  # ZappaCLI would fall back to ZAPPA_* variables silently
        raise FileNotFoundError(f"Zappa settings file not found: {path}")
    cli = ZappaCLI()
    cli.api_stage = stage
    cli.load_settings_file(str(path))
    if stage not in cli.zappa_settings:
        raise ValueError(f"Stage {stage!r} is not defined in {path}")
    for key, value in (overrides or {}).items():
        cli.override_stage_config_setting(key, value)
    # These make the handler fetch code or environment from S3 at cold start.
    for key in ("slim_handler", "remote_env", "remote_env_bucket", "remote_env_file"):
        if cli.stage_config.get(key):
            logger.warning("localgateway: ignoring %r, which needs S3", key)
            cli.override_stage_config_setting(key, None)
    config = cli.stage_config
    for name, default in _CLI_SETTINGS.items():
        setattr(cli, name, config.get(name, default))
    cli.project_name = config.get("project_name") or slugify.slugify(path.parent.name)[:15]
    cli.use_websocket = config.get("websocket_handler_module")  # no cwd auto-detection
    # On Lambda aws_environment_variables are the function's environment; locally the
    # settings module is the only way in, as for environment_variables.
    env = dict(config.get("aws_environment_variables", {}))
    env.update(config.get("environment_variables", {}))
    cli.check_environment(env)
    cli.environment_variables = env
    return ZappaStage(
        source=cli.get_zappa_settings_string(),
        lambda_name=slugify.slugify(f"{cli.project_name}-{stage}"),
        region=cli.aws_region or "us-east-1",
        timeout_seconds=int(config.get("timeout_seconds", 30)),
        memory_size=int(config.get("memory_size", 512)),
        binary_support=bool(cli.binary_support),
        websocket_module=cli.use_websocket,
        environment=dict(cli.environment_variables),
    )
