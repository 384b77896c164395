"""Swagger UI at /docs, its scripts and styles served by the API itself from the installed
`swagger-ui-bundle` package: no CDN (hospital networks often have no internet, and a script
fetched from elsewhere would run on the page where API keys are pasted)."""

from __future__ import annotations

from apiflask import APIFlask
from flask import Blueprint
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"


def init_app(app: APIFlask) -> None:
    app.register_blueprint(
        Blueprint(
            "docs_assets", __name__, static_folder=str(swagger_ui_path), static_url_path=ASSETS
        )
    )
    app.config.update(
        SWAGGER_UI_CSS=f"{ASSETS}/swagger-ui.css",
        SWAGGER_UI_BUNDLE_JS=f"{ASSETS}/swagger-ui-bundle.js",
        SWAGGER_UI_STANDALONE_PRESET_JS=f"{ASSETS}/swagger-ui-standalone-preset.js",
        DOCS_FAVICON=f"{ASSETS}/favicon-32x32.png",
    )
