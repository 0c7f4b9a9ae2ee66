"""The front door: the subscribe form, its double opt-in request, and the live preview of
the papers a reader's topics would bring today."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, redirect, render_template, request

from .. import subscribe_form
from ..ratelimit import RateLimited
from ..subscribers import InvalidForm
from .context import client_address, current_settings, limit_arg
from .forms import check_csrf, form_choices
from .responses import too_many

bp = Blueprint("subscribe", __name__)


@bp.get("/")
def subscribe_page() -> Any:
    return form_page({}, {})


@bp.get("/subscribe")
def subscribe_get() -> Any:
    return redirect("/", code=303)


@bp.post("/subscribe")
def subscribe() -> Any:
    check_csrf()
    settings = current_settings()
    try:
        signup = subscribe_form.signup(settings, request.form, client=client_address())
    except InvalidForm as exc:
        return form_page(request.form, exc.errors), 400
    except RateLimited as exc:
        return too_many(str(exc), exc.retry_after)
    return render_template("check_inbox.html", email=signup.email,
                           minutes=settings.confirm_resend_minutes)


@bp.get("/preview")
def preview() -> Any:
    from ..recommend import MAX_LIMIT, MAX_TOPICS_CHARS, recommend

    topics = request.args.get("topics", "")[:MAX_TOPICS_CHARS]
    papers = recommend(current_settings(), topics, limit_arg(MAX_LIMIT))
    return jsonify(topics=topics, papers=papers)


def form_page(values: Any, errors: dict[str, str]) -> str:
    settings = current_settings()
    defaults = {
        "time_zone": settings.default_time_zone,
        "send_hour": str(settings.default_send_hour),
    }  # no papers_per_digest: the form offers the default for each cadence (`_fields.html`)
    merged = {**defaults, **{k: v for k, v in dict(values).items() if v}}
    return render_template("subscribe.html", values=merged, errors=errors,
                           prefill_time_zone="time_zone" not in values, **form_choices())
