"""Build steps for the Zappa deployment, run in the checkout, never on Lambda.

``zappa_settings.json`` names ``compile_bytecode`` as its ``prebuild_script``, which
``zappa package``, ``deploy`` and ``update`` run before they zip the project. Zappa loads this
file by path, not as part of the ``chatsite`` package, so it imports nothing but the standard
library (and no Django settings).

**The Lambda environment.** Zappa zips the site-packages of the environment that ``VIRTUAL_ENV``
names, else (on a machine with pyenv) pyenv's global version: whatever that holds, built for
whatever machine it was installed on. The ``python3.11`` runtime is Amazon Linux 2 on x86_64,
with glibc 2.26, while pip on a newer Linux picks wheels for a newer glibc (Pillow's
manylinux_2_28 wheels need GLIBC_2.27 and fail to load there). So the zip is built from an
environment of its own, ``.lambda-env``: the runtime packages of ``requirements.txt``, at their
pins, with every package that has compiled code installed from its ``manylinux2014_x86_64``
wheel (glibc 2.17, x86_64), whatever machine builds it. ``python -m chatsite.deployment env``
builds it (``make lambda-env``; ``make package``, ``deploy`` and ``update`` run Zappa with it);
the prebuild refuses any other environment. The build needs the runtime's Python (3.11) and
PyPI, nothing else: Linux on x86_64 is not needed.

``python -m chatsite.deployment template STAGE`` prints the CloudFormation template that
``zappa deploy STAGE`` creates, with the WebSocket API that ``zappa template`` leaves out;
``python -m chatsite.deployment ws-url STAGE --save`` (``make ws-url``) puts the deployed
WebSocket URL into the stage's remote_env as CHAT_WS_URL.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
from pathlib import Path

# The Lambda runtime that zappa_settings.json names, and what it runs.
RUNTIME = "python3.11"
RUNTIME_PYTHON = (3, 11)
RUNTIME_GLIBC = (2, 26)  # Amazon Linux 2
RUNTIME_MACHINE = "x86_64"
# Compiled packages come from wheels for this platform: glibc 2.17 or older, x86_64.
PLATFORM = "manylinux2014_x86_64"
# What the function imports, by their names in requirements.txt (their pins come from there);
# their dependencies come along. Tests, lint, benchmarks and the ASGI servers stay out.
RUNTIME_PACKAGES = (
    "django",
    "channels",
    "channels-redis",
    "psycopg",
    "dj-database-url",
    "boto3",
    "django-storages",
    "zappa",
    "pillow",
    "puremagic",
    # Message formatting (chat/formatting.py).
    "markdown-it-py",
    "linkify-it-py",
    "nh3",
    # The counters behind CloudWatch's EMF lines (chat/metrics.py).
    "prometheus-client",
)
ENV_DIR = ".lambda-env"
STAMP = ".chat-lambda-env.json"
BUILD_VERSION = 1  # of the recipe below: a change rebuilds every environment


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


def runtime_requirements(root: Path) -> list[str]:
    """The pinned lines of requirements.txt that the Lambda function needs."""
    lines = []
    for raw in (root / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and _name(line) in RUNTIME_PACKAGES:
            lines.append(line)
    missing = set(RUNTIME_PACKAGES) - {_name(line) for line in lines}
    if missing:
        raise SystemExit(f"requirements.txt pins none of {sorted(missing)}")
    return lines


def fingerprint(root: Path) -> dict[str, object]:
    """What an environment was built from: when any of it changes, it is built again."""
    lines = runtime_requirements(root)
    return {
        "recipe": BUILD_VERSION,
        "runtime": RUNTIME,
        "platform": PLATFORM,
        "requirements": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
    }


def site_packages(env: Path) -> Path:
    """Where Zappa looks in an environment (lib/pythonX.Y/site-packages of its own Python)."""
    return env / "lib" / f"python{RUNTIME_PYTHON[0]}.{RUNTIME_PYTHON[1]}" / "site-packages"


def is_current(env: Path, root: Path) -> bool:
    try:
        built = json.loads((env / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return built == fingerprint(root)


def _require_runtime_python() -> None:
    if sys.version_info[:2] != RUNTIME_PYTHON:
        raise SystemExit(
            f"The Lambda runtime is {RUNTIME}: build with Python "
            f"{RUNTIME_PYTHON[0]}.{RUNTIME_PYTHON[1]}, not {sys.version.split()[0]} (Zappa "
            "packages the environment for the Python it runs on, and bytecode is per version)."
        )


def _compiled_distributions(packages: Path) -> list[str]:
    """`name==version` of every installed distribution whose wheel is not pure Python."""
    pins = []
    for info in sorted(packages.glob("*.dist-info")):
        wheel = info / "WHEEL"
        if not wheel.is_file() or "Root-Is-Purelib: true" in wheel.read_text():
            continue
        fields = dict(
            line.split(": ", 1)
            for line in (info / "METADATA").read_text().splitlines()
            if ": " in line and not line.startswith(" ")
        )
        pins.append(f"{fields['Name']}=={fields['Version']}")
    return pins


def _installed_here() -> list[str]:
    from importlib import metadata

    pins = set()
    for dist in metadata.distributions():
        name, version = dist.metadata["Name"], dist.version
        if name and version and "+" not in version:  # a local build is no constraint
            pins.add(f"{_name(name)}=={version}")
    return sorted(pins)


def build_environment(root: Path | None = None, env: Path | None = None) -> Path:
    """The Lambda environment of this checkout, built unless it is current; returns its path."""
    root = (root or Path.cwd()).resolve()
    env = (env or root / ENV_DIR).resolve()
    if is_current(env, root):
        return env
    _require_runtime_python()
    building = env.with_name(env.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    packages = site_packages(building)
    packages.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    pip += ["--no-compile", "--target", str(packages)]
    # First everything with its dependencies, as pip resolves them here (pure-Python packages
    # that only publish sources included); then every package with compiled code again, at the
    # same version, from its wheel for the runtime's platform.
    # Transitive dependencies at the versions the tests ran against (this Python's environment).
    constraints = building / "constraints.txt"
    constraints.write_text("".join(f"{pin}\n" for pin in _installed_here()))
    subprocess.run([*pip, "-c", str(constraints), *runtime_requirements(root)], check=True)
    compiled = _compiled_distributions(packages)
    platform = ["--platform", PLATFORM, "--only-binary=:all:", "--implementation", "cp"]
    major, minor = RUNTIME_PYTHON
    platform += ["--python-version", f"{major}.{minor}", "--abi", f"cp{major}{minor}"]
    result = subprocess.run([*pip, "--upgrade", "--no-deps", *platform, *compiled])
    if result.returncode:
        raise SystemExit(
            f"Some of {compiled} have no {PLATFORM} wheel for {RUNTIME} on PyPI: pin versions "
            "that do in requirements.txt (`pip download --no-deps --only-binary=:all: "
            f"--platform {PLATFORM} --python-version 3.11 NAME==VERSION` tells)."
        )
    constraints.unlink()
    (building / STAMP).write_text(json.dumps(fingerprint(root)))
    shutil.rmtree(env, ignore_errors=True)
    building.rename(env)
    return env


def check_environment(root: Path) -> Path:
    """The environment Zappa is about to package, if it is this checkout's Lambda environment;
    otherwise stop with what to run instead."""
    named = os.environ.get("VIRTUAL_ENV")
    env = Path(named).resolve() if named else None
    if env is None or not is_current(env, root):
        what = f"VIRTUAL_ENV={named}" if named else "without VIRTUAL_ENV, pyenv's global Python"
        if env is not None and (env / STAMP).exists():
            problem = "is out of date with requirements.txt"
        else:
            problem = f"is not the Lambda environment, {root / ENV_DIR}"
        raise SystemExit(
            f"Zappa packages the environment VIRTUAL_ENV names, and {what} {problem} (the "
            "runtime's wheels, see chatsite/deployment.py). Use `make package STAGE=dev` (or "
            "deploy, update), or run `python -m chatsite.deployment env` and then "
            f"`VIRTUAL_ENV={root / ENV_DIR} zappa ...`."
        )
    return env


def compile_bytecode() -> None:
    """Zappa's prebuild: check that Zappa packages the Lambda environment, then write
    hash-checked .pyc files for the project and that environment before Zappa zips them.

    Zappa copies sources without their timestamps, so the .pyc files it ships no longer match
    and Lambda (whose /var/task is read-only) compiles every module at every cold start: about
    1 s of the 1.9 s measured here. A hash-checked .pyc stays valid whatever the timestamps.
    """
    root = Path.cwd()
    env = check_environment(root)
    _require_runtime_python()
    excluded: set[str] = {"__pycache__", ".git", ".venv", ENV_DIR, "node_modules"}
    settings_file = root / "zappa_settings.json"
    if settings_file.is_file():
        for stage in json.loads(settings_file.read_text()).values():
            excluded.update(stage.get("exclude", []))

    def skipped(name: str) -> bool:  # Zappa's own test: shutil.ignore_patterns on each name
        return any(fnmatch.fnmatch(name, pattern) for pattern in excluded)

    sources = []
    for tree in (root, site_packages(env)):
        for folder, dirs, files in os.walk(tree):
            dirs[:] = [d for d in dirs if not skipped(d)]
            sources += [Path(folder, f) for f in files if f.endswith(".py") and not skipped(f)]
    mode = py_compile.PycInvalidationMode.CHECKED_HASH
    for source in sources:
        try:
            py_compile.compile(str(source), doraise=True, invalidation_mode=mode)
        except (py_compile.PyCompileError, OSError):
            pass  # what does not compile here would not import on Lambda either


def websocket_url(stage: str) -> str | None:
    """The deployed stage's WebSocket URL (wss://…/STAGE), from its CloudFormation stack, as
    `zappa deploy` prints it; None before the first deploy. Needs the account's credentials."""
    from zappa.cli import ZappaCLI

    cli = ZappaCLI()
    cli.api_stage = stage
    cli.load_settings("zappa_settings.json")
    return cli.zappa.get_websocket_url(cli.lambda_name, cli.api_stage)


def save_in_remote_env(remote_env: str, values: dict[str, str], s3: object = None) -> dict:
    """Merge `values` into the JSON file at the stage's remote_env (s3://bucket/key), which the
    function reads at every cold start; returns the file's new content."""
    match = re.fullmatch(r"s3://([^/]+)/(.+)", remote_env or "")
    if not match:
        raise SystemExit(f"remote_env must be an s3://bucket/key URL, not {remote_env!r}")
    bucket, key = match.groups()
    if s3 is None:
        import boto3

        s3 = boto3.client("s3")
    try:
        current = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())  # type: ignore[attr-defined]
    except s3.exceptions.NoSuchKey:  # type: ignore[attr-defined]
        current = {}
    current.update(values)
    body = json.dumps(current, indent=2, sort_keys=True).encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")  # type: ignore[attr-defined]
    return current


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chatsite.deployment")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env", help=f"build {ENV_DIR}, the environment Zappa packages")
    template = commands.add_parser(
        "template", help="the CloudFormation template `zappa deploy` creates, WebSocket API too"
    )
    template.add_argument("stage")
    template.add_argument("-o", "--output", help="a file instead of standard output")
    ws_url = commands.add_parser(
        "ws-url", help="the deployed stage's WebSocket URL (CHAT_WS_URL), from its stack"
    )
    ws_url.add_argument("stage")
    ws_url.add_argument(
        "--save", action="store_true", help="write it as CHAT_WS_URL into the stage's remote_env"
    )
    options = parser.parse_args(argv)
    if options.command == "env":
        print(build_environment())
    elif options.command == "ws-url":
        url = websocket_url(options.stage)
        if not url:
            raise SystemExit(f"Stage {options.stage} has no WebSocket API yet: deploy it first.")
        print(url)
        if options.save:
            stages = json.loads(Path("zappa_settings.json").read_text())
            stage = stages[options.stage]
            remote_env = stage.get("remote_env") or stages.get(stage.get("extends", ""), {}).get(
                "remote_env"
            )
            save_in_remote_env(remote_env, {"CHAT_WS_URL": url})
            print(f"CHAT_WS_URL saved in {remote_env}: new containers read it at their cold start")
    else:
        from chatsite.cloudformation import deploy_template

        text = json.dumps(deploy_template(options.stage), indent=2) + "\n"
        if options.output:
            Path(options.output).write_text(text)
        else:
            sys.stdout.write(text)


if __name__ == "__main__":
    main()
