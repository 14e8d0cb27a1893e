"""`manage.py send_digests`: email each user the mentions and direct messages still unread
CHAT_EMAIL_DELAY minutes after they came (run it every minute from cron; on Lambda the schedule in
zappa_settings.json runs chat.digest.scheduled). Safe to run twice at once: a user another run has
is skipped."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from chat import digest


class Command(BaseCommand):
    help = "Email digests of mentions and direct messages left unread (CHAT_EMAIL_DELAY minutes)."

    def handle(self, *args: Any, **options: Any) -> None:
        result = digest.send_digests()
        sent = result["sent"]
        self.stdout.write(
            f"Sent {sent} digest{'s' if sent != 1 else ''}; "
            f"{result['nothing']} with nothing to send, {result['failed']} failed, "
            f"{result['busy']} taken by another run, {result['left']} left for the next run."
        )
        if result["failed"]:
            # cron mails a failing job's output; the log has the mail backend's error.
            self.stderr.write(f"{result['failed']} digests failed; the next run retries them.")
