"""The web side (Flask): subscribe, confirm, preferences, unsubscribe, provider webhooks.

`create_app()` is the application factory gunicorn and `digest serve` use. It registers one
blueprint per door, as the Flask tutorial does; views are thin: they read the request, call
one library function (`subscribers`, `webhooks`, `recommend`) and render a page from
`templates/web/`. Every view and helper reaches the settings through
`context.current_settings()`.

| module       | route                                    | what                                  |
|--------------|------------------------------------------|---------------------------------------|
| subscribe.py | GET  /                                   | subscribe form, with a live preview   |
|              | POST /subscribe                          | double opt-in: records; emails later  |
|              | GET  /preview?topics=...                 | JSON: the papers these topics bring   |
| links.py     | GET, POST /confirm/<token>               | one button; the POST confirms         |
|              | GET, POST /preferences/<token>           | every choice, pause; what we record   |
|              | GET  /preferences/<token>/data           | the reader's data as a JSON download  |
|              | GET, POST /preferences/<token>/delete    | one button; the POST deletes them     |
|              | GET, POST /unsubscribe/<token>           | one button; the POST unsubscribes     |
|              | POST /unsubscribe/<token>/resubscribe    | the way back                          |
|              | GET  /feedback/<token>/<paper>/open      | counts the click, redirects (/pdf)    |
|              | GET, POST /feedback/<token>/<paper>/more | one button; the POST records (/less)  |
| reading.py   | GET  /archive/<token>                    | a past digest ("View in browser")     |
|              | POST /first-digest/<token>               | today's digest now, after confirming  |
| hooks.py     | POST /webhooks/<provider>                | sendgrid, mailgun, postmark, generic  |
| ops.py       | GET  /healthz                            | 200 when the database answers         |
|              | GET  /metrics                            | Prometheus; 404 unless METRICS_TOKEN  |
| responses.py |                                          | security headers, metrics, error pages|
| forms.py     |                                          | CSRF token, the forms' choices        |
| context.py   |                                          | settings, clock, client, `?limit=`    |

Forms carry a CSRF token kept in the (signed) session cookie; the RFC 8058 one-click POST and
the webhooks carry none, and prove themselves by the signed link or the provider's signature.

Every number taken from a URL is bounded before it reaches the database: a paper id by the
route (PostgreSQL's INTEGER), `limit` by `context.limit_arg`; anything else is a 4xx.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from ..health import link_warning
from ..render.filters import topic_list
from ..render.plain import BRAND
from ..settings import PROJECT_DIR, Settings
from . import hooks, links, ops, reading, responses, subscribe
from .context import SETTINGS_KEY
from .forms import csrf_token

WEB_TEMPLATES = PROJECT_DIR / "templates" / "web"
MAX_REQUEST_BYTES = 1024 * 1024  # webhooks batch events; forms are far smaller


def create_app(settings: Settings | None = None) -> Flask:
    """The web app for `settings` (default: read from the environment and `.env`)."""
    settings = settings or Settings.from_env()
    app = Flask(
        __name__,
        template_folder=str(WEB_TEMPLATES),
        static_folder=str(WEB_TEMPLATES / "static"),
        static_url_path="/static",
    )
    configure(app, settings)
    hooks.install_providers(app, settings)
    if warning := link_warning(settings):
        app.logger.warning("%s", warning)
    app.jinja_env.globals.update(brand=BRAND, csrf_token=csrf_token)
    app.jinja_env.filters.update(topic_list=topic_list)
    responses.register(app)
    for blueprint in (subscribe.bp, links.bp, reading.bp, hooks.bp, ops.bp):
        app.register_blueprint(blueprint)
    return app


def configure(app: Flask, settings: Settings) -> None:
    """The settings, the session cookie and the proxy chain."""
    app.config[SETTINGS_KEY] = settings
    # The session cookie holds only the CSRF secret; its key is derived, never the link key.
    app.secret_key = hmac.new(
        settings.signing_key().encode(), b"paper-digest:flask-session", hashlib.sha256
    ).hexdigest()
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.public_base_url.startswith("https://"),
        SESSION_COOKIE_NAME="digest_session",
        PERMANENT_SESSION_LIFETIME=timedelta(days=1),
        SEND_FILE_MAX_AGE_DEFAULT=3600,
    )
    if settings.trusted_proxy_count > 0:
        n = settings.trusted_proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
