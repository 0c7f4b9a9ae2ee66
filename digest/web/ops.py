"""The operators' routes: `/healthz` for load balancers and `/metrics` for Prometheus."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, jsonify, request

from .. import metrics
from ..health import database_error
from .context import current_settings

bp = Blueprint("ops", __name__)


@bp.get("/metrics")
def metrics_page() -> Any:
    """For Prometheus: off (404) unless METRICS_TOKEN is set, then only with that token;
    the counts name no subscriber, but they are the list's business figures."""
    token = current_settings().metrics_token
    if not token:
        abort(404)
    if not metrics.bearer_token_matches(request.headers.get("Authorization", ""), token):
        return Response("Send Authorization: Bearer <METRICS_TOKEN>.\n", status=401,
                        mimetype="text/plain",
                        headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)


@bp.get("/healthz")
def healthz() -> Any:
    """For load balancers: 200 when the database answers."""
    error = database_error(current_settings())
    if error is not None:
        return jsonify(status="error", database=error[:200]), 503
    return jsonify(status="ok"), 200
