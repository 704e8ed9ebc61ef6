from __future__ import annotations

import gc
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Import every view now, then move what the process holds after start-up out of the garbage
# collector's reach: a full collection over those ~110k long-lived objects took 33 ms here,
# a pause that landed on whichever request triggered it (the judging path's p99). Requests'
# own garbage is still collected as usual.
get_resolver().url_patterns  # noqa: B018
gc.freeze()
