"""How every answer leaves the app: the security headers, the request metrics, the message
page, and the error handlers that turn a refused link or a 4xx into a page (or JSON for the
machine-facing routes). `register` installs them all on the app in one place.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from flask import Flask, Response, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from .. import feedback, lifecycle, metrics, subscribers
from ..subscribers import SubscriberError

# 'self' only: no inline script or style, no third-party anything, no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Links carry tokens: never hand the URL to another site.
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HTTP_ERROR_TITLES = {404: "Page not found", 413: "Too much data", 405: "Not allowed here"}
# Machines call these; they get JSON errors, not pages.
JSON_PATH_PREFIXES = ("/webhooks/",)
JSON_PATHS = ("/preview",)


class LinkError(Exception):
    """A signed link that cannot be used; rendered as a friendly page."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def message(
    title: str, body: str, status: int = 200, action: tuple[str, str] | None = None
) -> Response:
    html = render_template("message.html", title=title, body=body, action=action)
    return Response(html, status=status, mimetype="text/html")


def too_many(body: str, retry_after: int) -> Response:
    response = message("Slow down a little", body, status=429)
    response.headers["Retry-After"] = str(retry_after)
    return response


def register(app: Flask) -> None:
    """Install the headers, the request metrics and the error pages on `app`."""
    app.before_request(start_request_clock)
    app.after_request(add_security_headers)
    app.after_request(count_request)
    app.register_error_handler(LinkError, link_error)
    app.register_error_handler(feedback.NotInTheirDigest, not_in_their_digest)
    app.register_error_handler(SubscriberError, subscriber_error)
    app.register_error_handler(HTTPException, http_error)


def add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def start_request_clock() -> None:
    g.request_started = perf_counter()


def count_request(response: Response) -> Response:
    metrics.observe_request(request, response, g.get("request_started"))
    return response


def link_error(exc: LinkError) -> Any:
    return message("This link cannot be used", str(exc), status=exc.status,
                   action=("Subscribe again", "/"))


def not_in_their_digest(exc: feedback.NotInTheirDigest) -> Any:
    return message("This link cannot be used", str(exc), status=404,
                   action=("Go to the subscribe page", "/"))


def subscriber_error(exc: SubscriberError) -> Any:
    unknown = (subscribers.UnknownSubscriber, lifecycle.UnknownSignup)
    status = 404 if isinstance(exc, unknown) else 409
    return message("That did not work", str(exc), status=status,
                   action=("Go to the subscribe page", "/"))


def http_error(exc: HTTPException) -> Any:
    if request.path.startswith(JSON_PATH_PREFIXES) or request.path in JSON_PATHS:
        return jsonify(error=exc.description), exc.code or 500
    code = exc.code or 500
    return message(HTTP_ERROR_TITLES.get(code, exc.name), exc.description or "", status=code,
                   action=("Go to the subscribe page", "/"))
