"""Test settings: the real PostgreSQL and Redis on this machine unless DATABASE_URL/REDIS_URL say
otherwise; a Redis key prefix per test run, so runs never see each other's rooms."""

import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/chat")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("CHAT_REDIS_PREFIX", f"chattest{os.getpid()}")
# Uploaded files of this run (servers started by the tests inherit it), never the project's media/.
os.environ.setdefault(
    "MEDIA_ROOT", os.path.join(tempfile.gettempdir(), f"chat-media-{os.getpid()}")
)

from chatsite.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# One test database per run, so that several runs on one machine never drop each other's database.
_suffix = os.environ.get("CHAT_TEST_DB_SUFFIX") or os.getpid()
DATABASES["default"]["TEST"] = {"NAME": f"test_chat_{_suffix}"}  # noqa: F405

# Notifications raised where the tests can see them at once (chat/notify.py's worker thread is
# tested on its own in tests/test_dms.py).
CHAT_UNREAD_INLINE = True
