"""``python manage.py localgateway``: the serverless deployment on one machine.

Serves the Zappa handler behind a local API Gateway: HTTP at the root, WebSockets at
``/ws/``, and the ``@connections`` API at ``/<stage>/@connections/<id>``.
"""

import asyncio
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


def _fault(value: str) -> tuple[str, float]:
    kind, _, fraction = value.partition("=")
    try:
        return kind, float(fraction)
    except ValueError:
        raise CommandError(f"--fault takes KIND=FRACTION, e.g. 429=0.1, not {value!r}") from None


class Command(BaseCommand):
    help = "Run the Zappa deployment locally behind an API Gateway emulator (REST + WebSocket)."

    def add_arguments(self, parser):
        default_settings = Path(getattr(settings, "BASE_DIR", ".")) / "zappa_settings.json"
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument("--stage", default="dev", help="stage of zappa_settings.json")
        parser.add_argument("--settings-file", default=str(default_settings))
        parser.add_argument("--workers", type=int, default=32, help="concurrent invocations")
        parser.add_argument("--idle-timeout", type=float, default=600.0, help="seconds")
        parser.add_argument("--max-duration", type=float, default=7200.0, help="seconds")
        parser.add_argument("--integration-timeout", type=float, default=29.0, help="seconds")
        parser.add_argument(
            "--route-responses",
            action="store_true",
            help="send a $default handler's returned body to the client (not what Zappa deploys)",
        )
        parser.add_argument(
            "--management-url-env",
            metavar="NAME",
            help="environment variable to set to the @connections endpoint URL",
        )
        parser.add_argument("--connections-delay", type=float, default=0.0, help="seconds")
        parser.add_argument(
            "--fault",
            type=_fault,
            action="append",
            default=[],
            metavar="KIND=FRACTION",
            help="answer a fraction of @connections calls with 429, 410 or hang",
        )
        parser.add_argument("--seed", type=int, default=0, help="seed for --fault")

    def handle(self, *args, **options):
        from chat.localgateway import LocalGateway, serve

        try:
            gateway = LocalGateway(
                options["settings_file"],
                options["stage"],
                host=options["host"],
                port=options["port"],
                workers=options["workers"],
                idle_timeout=options["idle_timeout"],
                max_duration=options["max_duration"],
                integration_timeout=options["integration_timeout"],
                route_responses=options["route_responses"],
                management_url_env=options["management_url_env"],
                connections_delay=options["connections_delay"],
                connections_faults=dict(options["fault"]),
                fault_seed=options["seed"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

        def ready() -> None:
            self.stdout.write(
                f"Local API Gateway for stage {gateway.stage!r}:\n"
                f"  HTTP          {gateway.url}/\n"
                f"  WebSocket     {gateway.ws_url}\n"
                f"  @connections  {gateway.management_url}\n"
                "Quit with CONTROL-C."
            )

        try:
            asyncio.run(serve(gateway, ready))
        except (FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
