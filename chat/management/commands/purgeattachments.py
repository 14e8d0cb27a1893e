"""`manage.py purgeattachments`: delete uploads never sent in a message (run it daily; on Lambda
the schedule in zappa_settings.json runs chat.attachments.scheduled_purge)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from chat import attachments


class Command(BaseCommand):
    help = "Delete uploads that were never sent in a message (files and rows)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=int,
            default=None,
            metavar="SECONDS",
            help="Age in seconds (default CHAT_ATTACHMENT_UNUSED_TTL).",
        )

    def handle(self, *args: Any, older_than: int | None, **options: Any) -> None:
        age = timedelta(seconds=older_than) if older_than is not None else None
        count = attachments.purge_unused(age)
        self.stdout.write(f"Deleted {count} unused upload{'s' if count != 1 else ''}.")
