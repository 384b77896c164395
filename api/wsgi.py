"""The WSGI entry for gunicorn (`api.wsgi:app`): the one place an app is built at import."""

from api import create_app

app = create_app()
