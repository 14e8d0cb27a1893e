"""Serverless cold start and package size.

Builds the Lambda package (`zappa package dev`, offline), unpacks it, and starts fresh Python
processes that see nothing but the package (`python -S`, like /var/task on Lambda). Each imports
Zappa's handler and answers one $connect event with a valid token. Printed: the package size,
and the median of --runs of (a) import to the $connect answer, measured inside the process
(budget 1.5 s), and (b) the process's whole life including interpreter start-up. Only the local
PostgreSQL is contacted; bounded by the timeouts below.

    python bench/cold_start.py [--runs 3] [--package PATH.zip]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, bench_env, database_url, ensure_database, setup_django

PROBE = """
import time
started = time.perf_counter()
import json, sys
sys.path.insert(0, {task!r})
from zappa.handler import lambda_handler
event = {{
    "requestContext": {{"routeKey": "$connect", "eventType": "CONNECT", "connectionId": "Cold=",
                        "domainName": "x.execute-api.us-east-1.amazonaws.com", "stage": "dev"}},
    "queryStringParameters": {{"token": {token!r}}},
    "isBase64Encoded": False,
}}
status = lambda_handler(event, None)["statusCode"]
print(json.dumps({{"status": status, "seconds": time.perf_counter() - started}}))
"""


def build(output: Path) -> None:
    """The zip as `make package` builds it: Zappa on the Lambda environment (.lambda-env, made or
    refreshed here by chatsite/deployment.py), which the prebuild insists on."""
    from chatsite.deployment import build_environment

    venv = Path(sys.prefix)
    lambda_env = build_environment(ROOT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(
        VIRTUAL_ENV=str(lambda_env),
        PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
        AWS_EC2_METADATA_DISABLED="true",
    )
    subprocess.run(
        [str(venv / "bin" / "zappa"), "package", "dev", "-o", str(output)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )


def token() -> str:
    from django.contrib.auth import get_user_model

    from chat import tokens
    from chat.models import ApiConnection

    user, _ = get_user_model().objects.get_or_create(username="bench-serverless")
    ApiConnection.objects.filter(connection_id="Cold=").delete()
    return tokens.make_token(user)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--package", type=Path, help="use this zip instead of building one")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()

    ensure_database()
    setup_django()
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        package = options.package or Path(tmp) / "chat-dev.zip"
        built = None
        if not options.package:
            started = time.monotonic()
            build(package)
            built = time.monotonic() - started
        size = package.stat().st_size
        task = Path(tmp) / "task"
        zipfile.ZipFile(package).extractall(task)
        env = {k: v for k, v in bench_env().items() if k != "DJANGO_SETTINGS_MODULE"}
        env.update(DATABASE_URL=database_url(), AWS_REGION="us-east-1")
        env.pop("PYTHONPATH", None)
        inside, whole = [], []
        for _ in range(options.runs):
            probe = PROBE.format(task=str(task), token=token())
            started = time.monotonic()
            result = subprocess.run(
                [sys.executable, "-S", "-c", probe],
                cwd=task,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            whole.append(time.monotonic() - started)
            if result.returncode != 0:
                raise SystemExit(result.stderr[-2000:])
            answer = json.loads(result.stdout.strip().splitlines()[-1])
            assert answer["status"] == 200, answer
            inside.append(answer["seconds"])
    figures = {
        "package_bytes": size,
        "package_mib": round(size / 2**20, 1),
        "build_seconds": round(built, 1) if built else None,
        "import_to_connect_s_median": round(statistics.median(inside), 3),
        "process_s_median": round(statistics.median(whole), 3),
        "runs": [round(x, 3) for x in inside],
    }
    if options.json:
        print(json.dumps(figures))
        return
    print("Serverless cold start (the package, unpacked, in a fresh `python -S`)")
    print(f"  package               {figures['package_mib']} MiB ({size:,} bytes; limit 50 MB)")
    if built:
        print(f"  zappa package dev     {figures['build_seconds']} s, offline")
    print(
        f"  import to $connect    {figures['import_to_connect_s_median']} s median"
        f" of {options.runs} {figures['runs']} (budget 1.5 s)"
    )
    print(f"  whole process         {figures['process_s_median']} s median")


if __name__ == "__main__":
    main()
