"""The WSGI application: what Zappa serves on Lambda (no WebSockets there; API Gateway holds them)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
application = get_wsgi_application()
