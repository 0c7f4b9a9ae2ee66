"""The web side (Flask): subscribe, confirm, preferences, unsubscribe, provider webhooks.

`create_app()` is the application factory gunicorn and `digest serve` use. Views are thin:
they read the request, call one library function (`subscribers`, `webhooks`, `recommend`)
and render a page from `templates/web/`.

| route                                  | what                                                   |
|----------------------------------------|--------------------------------------------------------|
| GET  /                                 | subscribe form, with a live preview of today's papers  |
| POST /subscribe                        | double opt-in: records the request; emails it later    |
| GET  /preview?topics=...               | JSON: the papers these topics would bring today        |
| GET, POST /confirm/<token>             | a page with one button; the POST confirms              |
| GET, POST /preferences/<token>         | topics, hour, time zone, papers per digest, pause      |
| GET, POST /unsubscribe/<token>         | a page with one button; the POST unsubscribes; RFC 8058|
| POST /unsubscribe/<token>/resubscribe  | the way back                                           |
| GET  /feedback/<token>/<paper>/open    | records the click, redirects to the paper (/pdf: PDF)  |
| GET, POST /feedback/<token>/<paper>/more | a page with one button; the POST records it (/less) |
| POST /webhooks/<provider>              | sendgrid, mailgun, postmark, generic                   |
| GET  /healthz                          | 200 when the database answers                          |
| GET  /metrics                          | Prometheus; 404 unless METRICS_TOKEN (Bearer) is set   |

A GET never changes anything (mail scanners open links to see where they lead), except that
following a paper link counts as a click; feedback.py sets a scanner's bursts of clicks
aside. Forms carry a CSRF token kept in the (signed) session cookie; the RFC 8058 one-click
POST and the webhooks carry none, and prove themselves by the signed link or the provider's
signature. A signed link acts only on the person it was made for (`tokens.Claim.binds`).

Every number taken from a URL is bounded before it reaches the database: a paper id by the
route (PostgreSQL's INTEGER), `limit` by `_limit_arg`; anything else is a 4xx.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta, timezone
from functools import cache
from time import perf_counter
from typing import Any
from zoneinfo import available_timezones

from flask import Flask, Response, abort, g, jsonify, redirect, render_template, request, session
from sqlalchemy import text
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from . import db, feedback, lifecycle, metrics, subscribe_form, subscribers, tokens, webhooks
from .health import link_warning
from .models import FeedbackKind, Subscriber, SubscriberStatus
from .ratelimit import RateLimited
from .render import BRAND, topic_list
from .settings import PROJECT_DIR, Settings
from .subscribers import MAX_PAPERS_PER_DIGEST, InvalidForm, SubscriberError
from .tokens import Purpose

WEB_TEMPLATES = PROJECT_DIR / "templates" / "web"
MAX_REQUEST_BYTES = 1024 * 1024  # webhooks batch events; forms are far smaller

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
PAPER_CHOICES = (3, 5, 10, 15, 20, 30, MAX_PAPERS_PER_DIGEST)
PAPER_ID = "int(max=2147483647):paper_id"  # the largest id a database INTEGER holds


class LinkError(Exception):
    """A signed link that cannot be used; rendered as a friendly page."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@cache
def time_zones() -> list[str]:
    return sorted(z for z in available_timezones() if "/" in z or z == "UTC")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(
        __name__,
        template_folder=str(WEB_TEMPLATES),
        static_folder=str(WEB_TEMPLATES / "static"),
        static_url_path="/static",
    )
    app.config["DIGEST_SETTINGS"] = settings
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
    providers = webhooks.configured_providers(settings)  # a bad key fails here, at start
    if warning := link_warning(settings):
        app.logger.warning("%s", warning)

    app.jinja_env.globals.update(brand=BRAND, csrf_token=_csrf_token)
    app.jinja_env.filters.update(topic_list=topic_list)

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.before_request
    def start_request_clock() -> None:
        g.request_started = perf_counter()

    @app.after_request
    def count_request(response: Response) -> Response:
        metrics.observe_request(request, response, g.get("request_started"))
        return response

    # --- subscribe ------------------------------------------------------------------------

    @app.get("/")
    def subscribe_page() -> Any:
        return _subscribe_form(settings, {}, {})

    @app.get("/subscribe")
    def subscribe_get() -> Any:
        return redirect("/", code=303)

    @app.post("/subscribe")
    def subscribe() -> Any:
        _check_csrf()
        try:
            signup = subscribe_form.signup(settings, request.form, client=_client())
        except InvalidForm as exc:
            return _subscribe_form(settings, request.form, exc.errors), 400
        except RateLimited as exc:
            return _too_many(str(exc), exc.retry_after)
        return render_template("check_inbox.html", email=signup.email,
                               minutes=settings.confirm_resend_minutes)

    @app.get("/preview")
    def preview() -> Any:
        from .recommend import MAX_LIMIT, MAX_TOPICS_CHARS, recommend

        topics = request.args.get("topics", "")[:MAX_TOPICS_CHARS]
        papers = recommend(settings, topics, _limit_arg(MAX_LIMIT))
        return jsonify(topics=topics, papers=papers)

    # --- confirm --------------------------------------------------------------------------

    @app.get("/confirm/<token>")
    def confirm_page(token: str) -> Any:
        claim = _claim(settings, Purpose.CONFIRM, token)
        with db.session_scope(settings) as s:
            signup = lifecycle.request_of(s, claim)
            subscriber = subscribers.subscriber_by_id(s, signup.subscriber_id or 0)
            if subscriber.status is SubscriberStatus.ACTIVE:
                return _confirmed(subscriber, already=True)
            return render_template("confirm.html", email=signup.email,
                                   choices=lifecycle.preferences_of(signup))

    @app.post("/confirm/<token>")
    def confirm(token: str) -> Any:
        _check_csrf()
        claim = _claim(settings, Purpose.CONFIRM, token)
        with db.session_scope(settings) as s:
            done = lifecycle.confirm_request(s, claim)
            return _confirmed(done.subscriber, already=done.already)

    # --- preferences ----------------------------------------------------------------------

    @app.get("/preferences/<token>")
    def preferences_page(token: str) -> Any:
        subscriber = _load(settings, Purpose.PREFERENCES, token)
        return _preferences_form(subscriber, _values_of(subscriber), {},
                                 saved=request.args.get("saved") == "1")

    @app.post("/preferences/<token>")
    def preferences(token: str) -> Any:
        _check_csrf()
        claim = _claim(settings, Purpose.PREFERENCES, token)
        with db.session_scope(settings) as s:
            subscriber = subscribers.linked_subscriber(s, claim)
            try:
                prefs = subscribers.read_preferences(request.form, subscriber.time_zone,
                                                     subscriber.send_hour,
                                                     subscriber.papers_per_digest)
            except InvalidForm as exc:
                return _preferences_form(subscriber, request.form, exc.errors), 400
            subscribers.update_preferences(s, subscriber.id, prefs,
                                           paused=request.form.get("paused") == "on")
        return redirect(f"/preferences/{token}?saved=1", code=303)

    # --- unsubscribe ----------------------------------------------------------------------

    @app.get("/unsubscribe/<token>")
    def unsubscribe_page(token: str) -> Any:
        subscriber = _load(settings, Purpose.UNSUBSCRIBE, token)
        if subscriber.status not in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
            return _unsubscribed(subscriber, token)
        return render_template("unsubscribe.html", subscriber=subscriber,
                               preferences_url=_preferences_path(settings, subscriber))

    @app.post("/unsubscribe/<token>")
    def unsubscribe(token: str) -> Any:
        # RFC 8058: the mail provider POSTs "List-Unsubscribe=One-Click" with no cookie,
        # session or CSRF token; the signed link is the proof. The answer must not redirect.
        one_click = request.form.get("List-Unsubscribe") == "One-Click"
        if not one_click:
            _check_csrf()
        try:
            claim = _claim(settings, Purpose.UNSUBSCRIBE, token)
        except LinkError as exc:
            if one_click:
                return Response(f"{exc}\n", status=exc.status, mimetype="text/plain")
            raise
        with db.session_scope(settings) as s:
            try:
                subscriber = lifecycle.unsubscribe(
                    s, subscribers.linked_subscriber(s, claim).id,
                    source="web:one-click" if one_click else "web",
                )
            except subscribers.UnknownSubscriber as exc:
                if one_click:
                    return Response(f"{exc}\n", status=404, mimetype="text/plain")
                raise
            if one_click:
                return Response("You are unsubscribed.\n", mimetype="text/plain")
            return _unsubscribed(subscriber, token)

    @app.post("/unsubscribe/<token>/resubscribe")
    def resubscribe(token: str) -> Any:
        _check_csrf()
        claim = _claim(settings, Purpose.UNSUBSCRIBE, token)
        with db.session_scope(settings) as s:
            subscriber = lifecycle.resubscribe(s, subscribers.linked_subscriber(s, claim).id)
            return render_template(
                "resubscribed.html", subscriber=subscriber,
                preferences_url=_preferences_path(settings, subscriber),
            )

    # --- feedback: paper links, "more / less like this" -----------------------------------

    @app.get(f"/feedback/<token>/<{PAPER_ID}>/<any(open, pdf):target>")
    def follow_paper(token: str, paper_id: int, target: str) -> Any:
        # The one GET that records something: a click is only a click if following the link
        # counts it. Link scanners that open every link are told apart in feedback.py.
        destination = feedback.follow_link(settings, token, paper_id, target, _now(),
                                           record_click=request.method == "GET")
        if destination is None:
            raise LinkError("This paper is no longer here.", 404)
        if not destination.redirect:
            # Not our reader's link, and a host the paper's source does not use: show it,
            # never send a visitor there from our address.
            return render_template("leaving.html", url=destination.url)
        return redirect(destination.url, code=302)

    @app.get(f"/feedback/<token>/<{PAPER_ID}>/<any(more, less):vote>")
    def vote_page(token: str, paper_id: int, vote: str) -> Any:
        claim = _claim(settings, Purpose.FEEDBACK, token)
        with db.session_scope(settings) as s:
            subscriber = subscribers.linked_subscriber(s, claim)
            target = feedback.vote_target(s, subscriber.id, paper_id)
        return render_template("feedback.html", target=target, vote=vote, recorded=False,
                               token=token)

    @app.post(f"/feedback/<token>/<{PAPER_ID}>/<any(more, less):vote>")
    def record_vote(token: str, paper_id: int, vote: str) -> Any:
        _check_csrf()
        claim = _claim(settings, Purpose.FEEDBACK, token)
        with db.session_scope(settings) as s:
            subscriber = subscribers.linked_subscriber(s, claim)
            feedback.record(s, subscriber.id, paper_id, FeedbackKind(vote), _now())
            target = feedback.vote_target(s, subscriber.id, paper_id)
            preferences_url = _preferences_path(settings, subscriber)
        return render_template("feedback.html", target=target, vote=vote, recorded=True,
                               token=token, preferences_url=preferences_url)

    # --- provider webhooks ----------------------------------------------------------------

    @app.post("/webhooks/<name>")
    def webhook(name: str) -> Any:
        provider = providers.get(name)
        if provider is None:
            return jsonify(error=f"no webhook {name!r} is configured here"), 404
        try:
            report = webhooks.handle_webhook(settings, provider, dict(request.headers),
                                             request.get_data(cache=False))
        except webhooks.WebhookError as exc:
            response = jsonify(error=str(exc))
            response.status_code = exc.status
            metrics.count_webhook_rejection(name, exc.status)
            if exc.status == 401 and name == "postmark":
                response.headers["WWW-Authenticate"] = 'Basic realm="webhooks"'
            return response
        return jsonify(report.as_dict())

    # --- health, metrics and errors -------------------------------------------------------

    @app.get("/metrics")
    def metrics_page() -> Any:
        """For Prometheus: off (404) unless METRICS_TOKEN is set, then only with that token;
        the counts name no subscriber, but they are the list's business figures."""
        if not settings.metrics_token:
            abort(404)
        if not metrics.bearer_token_matches(request.headers.get("Authorization", ""),
                                            settings.metrics_token):
            return Response("Send Authorization: Bearer <METRICS_TOKEN>.\n", status=401,
                            mimetype="text/plain",
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    @app.get("/healthz")
    def healthz() -> Any:
        """For load balancers: 200 when the database answers."""
        try:
            with db.engine_for(settings.database_url).connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            return jsonify(status="error", database=str(exc)[:200]), 503
        return jsonify(status="ok"), 200

    @app.errorhandler(LinkError)
    def link_error(exc: LinkError) -> Any:
        return _message("This link cannot be used", str(exc), status=exc.status,
                        action=("Subscribe again", "/"))

    @app.errorhandler(feedback.NotInTheirDigest)
    def not_in_their_digest(exc: feedback.NotInTheirDigest) -> Any:
        return _message("This link cannot be used", str(exc), status=404,
                        action=("Go to the subscribe page", "/"))

    @app.errorhandler(SubscriberError)
    def subscriber_error(exc: SubscriberError) -> Any:
        unknown = (subscribers.UnknownSubscriber, lifecycle.UnknownSignup)
        status = 404 if isinstance(exc, unknown) else 409
        return _message("That did not work", str(exc), status=status,
                        action=("Go to the subscribe page", "/"))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if request.path.startswith("/webhooks/") or request.path == "/preview":
            return jsonify(error=exc.description), exc.code or 500
        titles = {404: "Page not found", 413: "Too much data", 405: "Not allowed here"}
        code = exc.code or 500
        return _message(titles.get(code, exc.name), exc.description or "", status=code,
                        action=("Go to the subscribe page", "/"))

    return app


# --- helpers the views share --------------------------------------------------------------


def _settings() -> Settings:
    from flask import current_app

    return current_app.config["DIGEST_SETTINGS"]  # type: ignore[no-any-return]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _client() -> str:
    """Who the per-client rate limit counts: the remote address (see TRUSTED_PROXY_COUNT)."""
    return request.remote_addr or "unknown"


def _csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def _check_csrf() -> None:
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    if not sent or not expected or not hmac.compare_digest(str(sent), str(expected)):
        abort(_message(
            "This form has expired",
            "For your safety, forms stop working after a while or when cookies are blocked. "
            "Go back, reload the page and try again.",
            status=400,
        ))


def _limit_arg(most: int, default: int = 5) -> int:
    """`?limit=`: a whole number (ASCII digits; "²" is a digit to Python, not to int),
    capped at `most`; 400 otherwise."""
    raw = request.args.get("limit", "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw[:6]) < 1:
        abort(400, description=f"limit must be a whole number from 1 to {most}.")
    return min(int(raw[:6]), most)


def _claim(settings: Settings, purpose: Purpose, token: str) -> tokens.Claim:
    """Whose a link is, if it is genuine and unexpired; a friendly LinkError otherwise."""
    try:
        return tokens.read_claim(settings, purpose, token)
    except tokens.ExpiredToken as exc:
        raise LinkError(_expired_message(purpose), 410) from exc
    except tokens.InvalidToken as exc:
        raise LinkError(
            "This link is not valid. Copy the whole link from the email, or use the one in "
            "your latest digest.", 400,
        ) from exc


def _expired_message(purpose: Purpose) -> str:
    if purpose is Purpose.CONFIRM:
        return "This confirmation link has expired. Subscribe again to get a new one."
    return "This link has expired. Use the link in your latest digest."


def _load(settings: Settings, purpose: Purpose, token: str) -> Subscriber:
    """The subscriber a link was made for (UnknownSubscriber if they are gone)."""
    claim = _claim(settings, purpose, token)
    with db.session_scope(settings) as s:
        subscriber = subscribers.linked_subscriber(s, claim)
        _ = subscriber.profile  # loaded before the session closes
        return subscriber


def _preferences_path(settings: Settings, subscriber: Subscriber) -> str:
    return f"/preferences/{tokens.make_token(settings, Purpose.PREFERENCES, subscriber)}"


def _values_of(subscriber: Subscriber) -> dict[str, str]:
    return {
        "topics": subscriber.profile.topics,
        "time_zone": subscriber.time_zone,
        "send_hour": str(subscriber.send_hour),
        "papers_per_digest": str(subscriber.papers_per_digest),
        "paused": "on" if subscriber.paused else "",
    }


def _form_choices(settings: Settings) -> dict[str, Any]:
    return {
        "time_zones": time_zones(),
        "hours": list(range(24)),
        "paper_choices": PAPER_CHOICES,
        "default_time_zone": settings.default_time_zone,
    }


def _subscribe_form(settings: Settings, values: Any, errors: dict[str, str]) -> str:
    defaults = {
        "time_zone": settings.default_time_zone,
        "send_hour": str(settings.default_send_hour),
        "papers_per_digest": str(settings.default_papers_per_digest),
    }
    merged = {**defaults, **{k: v for k, v in dict(values).items() if v}}
    return render_template("subscribe.html", values=merged, errors=errors,
                           prefill_time_zone="time_zone" not in values,
                           **_form_choices(settings))


def _preferences_form(
    subscriber: Subscriber, values: Any, errors: dict[str, str], saved: bool = False
) -> str:
    settings = _settings()
    unsubscribe_token = tokens.make_token(settings, Purpose.UNSUBSCRIBE, subscriber)
    return render_template("preferences.html", subscriber=subscriber, values=dict(values),
                           errors=errors, saved=saved,
                           unsubscribe_url=f"/unsubscribe/{unsubscribe_token}",
                           **_form_choices(settings))


def _confirmed(subscriber: Subscriber, already: bool) -> str:
    return render_template(
        "confirmed.html", subscriber=subscriber, already=already,
        preferences_url=_preferences_path(_settings(), subscriber),
    )


def _unsubscribed(subscriber: Subscriber, token: str) -> str:
    can_return = lifecycle.can_resubscribe(subscriber)
    return render_template("unsubscribed.html", subscriber=subscriber, token=token,
                           can_return=can_return)


def _message(
    title: str, body: str, status: int = 200, action: tuple[str, str] | None = None
) -> Response:
    html = render_template("message.html", title=title, body=body, action=action)
    return Response(html, status=status, mimetype="text/html")


def _too_many(body: str, retry_after: int) -> Response:
    response = _message("Slow down a little", body, status=429)
    response.headers["Retry-After"] = str(retry_after)
    return response

