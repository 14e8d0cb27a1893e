from django.contrib import admin

from tests.hostsite.accounts.models import User

admin.site.register(User, search_fields=["email"])
