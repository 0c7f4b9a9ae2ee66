"""Mail providers' event webhooks (bounces, complaints, deliveries): one route for every
provider configured here; each request proves itself by the provider's signature."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request

from .. import metrics, webhooks
from ..settings import Settings
from .context import current_settings

PROVIDERS_KEY = "digest_webhook_providers"

bp = Blueprint("hooks", __name__)


def install_providers(app: Flask, settings: Settings) -> None:
    """Read the configured providers once, when the app is made: a bad key fails at start."""
    app.extensions[PROVIDERS_KEY] = webhooks.configured_providers(settings)


@bp.post("/webhooks/<name>")
def webhook(name: str) -> Any:
    provider = current_app.extensions[PROVIDERS_KEY].get(name)
    if provider is None:
        return jsonify(error=f"no webhook {name!r} is configured here"), 404
    try:
        report = webhooks.handle_webhook(current_settings(), provider, dict(request.headers),
                                         request.get_data(cache=False))
    except webhooks.WebhookError as exc:
        response = jsonify(error=str(exc))
        response.status_code = exc.status
        metrics.count_webhook_rejection(name, exc.status)
        if exc.status == 401 and name == "postmark":
            response.headers["WWW-Authenticate"] = 'Basic realm="webhooks"'
        return response
    return jsonify(report.as_dict())
