"""The web side (Flask): subscribe, confirm, preferences, unsubscribe, provider webhooks.

`create_app()` is the application factory gunicorn and `digest serve` use.
"""

from __future__ import annotations

from flask import Flask, jsonify
from sqlalchemy import text

from . import db
from .settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["DIGEST_SETTINGS"] = settings

    @app.get("/healthz")
    def healthz() -> tuple[object, int]:
        """For load balancers: 200 when the database answers."""
        try:
            with db.engine_for(settings.database_url).connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            return jsonify(status="error", database=str(exc)[:200]), 503
        return jsonify(status="ok"), 200

    return app
