"""``python manage.py localgateway``: the serverless deployment on one machine.

Serves the Zappa handler behind a local API Gateway: HTTP at the root, WebSockets at
``/ws/``, the ``@connections`` API at ``/<stage>/@connections/<id>`` and Lambda's Invoke API
(for Zappa's ``@task``). Options: ``python manage.py localgateway --help``.

This process has already loaded Django's settings, but on Lambda Django is loaded by Zappa's
handler, after the stage's ``environment_variables`` (CHAT_FANOUT_BACKENDS, CHAT_POLL_WAIT, ...) and
the gateway's URLs are in the environment. So the command hands over to a fresh interpreter
running ``python -m localgateway`` with the same arguments.
"""

import importlib.util
import os
import subprocess
import sys

from django.core.management.base import BaseCommand, CommandError


def _gateway_is_here() -> None:
    # The gateway is a development tool of the chat's own repository, not part of the package a
    # site installs: say so instead of a bare "No module named localgateway".
    if importlib.util.find_spec("localgateway") is None:
        raise CommandError(
            "The local gateway is not installed: it runs from a checkout of the chat's repository"
            " (python -m localgateway)."
        )


class Command(BaseCommand):
    help = "Run the Zappa deployment locally behind an API Gateway emulator (REST + WebSocket)."

    def run_from_argv(self, argv: list[str]) -> None:
        try:
            _gateway_is_here()
        except CommandError as error:
            sys.exit(f"CommandError: {error}")
        command = [sys.executable, "-m", "localgateway", *argv[2:]]
        os.execv(sys.executable, command)

    def add_arguments(self, parser):
        parser.add_argument("args", nargs="*", help="arguments for python -m localgateway")

    def handle(self, *args, **options):
        # call_command(): the same fresh interpreter, as a child.
        _gateway_is_here()
        subprocess.run([sys.executable, "-m", "localgateway", *args], check=True)
