"""A single-file Django project whose WSGI application is wrapped by the middleware.

Run it (from the repository root)::

    gunicorn --chdir examples --workers 1 --threads 8 --bind 127.0.0.1:8001 django_wsgi:application

``POST /report/<n>`` takes ``EXAMPLE_WORK_SECONDS`` (default 10) and returns JSON; it answers
``202`` with a status URL at once. Django itself is untouched: the wrapping happens on the
object gunicorn serves, exactly as an ops team would do it for an existing project.
"""

from __future__ import annotations

import os
import sys
import time

import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from wsgi_deferred import DeferredMiddleware

WORK_SECONDS = float(os.environ.get("EXAMPLE_WORK_SECONDS", "10"))

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret"),
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        INSTALLED_APPS=[],
        USE_TZ=True,
    )


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello from django", content_type="text/plain")


@csrf_exempt
@require_POST
def report(request: HttpRequest, n: int) -> JsonResponse:
    progress = request.META.get("wsgi_deferred.progress", lambda *a, **k: None)
    for step in range(5):
        time.sleep(WORK_SECONDS / 5)
        progress((step + 1) / 5, f"section {step + 1} of 5")
    return JsonResponse(
        {"report": n, "rows": [i * n for i in range(10)], "bytes": len(request.body)}
    )


urlpatterns = [path("hello", hello), path("report/<int:n>", report)]

django.setup()
application = DeferredMiddleware(get_wsgi_application(), routes=["POST /report/<int:n>"])

if __name__ == "__main__":  # python examples/django_wsgi.py runserver 8001
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
