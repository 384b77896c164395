"""The reading room: web pages under /ui for the people who read and confirm results."""

from __future__ import annotations

from flask import Flask

from api.ui import sessions, views
from core.config import Settings


def init_app(app: Flask, settings: Settings) -> None:
    sessions.init_app(app, settings)
    app.register_blueprint(views.bp)
