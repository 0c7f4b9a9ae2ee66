"""The pages behind the signed links in our emails: confirm, preferences, unsubscribe (with
RFC 8058's one-click POST), resubscribe, and the feedback links beside each paper.

A GET shows a page with one button and changes nothing (mail scanners open links to see
where they lead); the POST acts. The one exception is following a paper link, which counts
as a click; feedback.py sets a scanner's bursts of clicks aside. A signed link acts only on
the person it was made for (`tokens.Claim.binds`).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request

from .. import archive, db, feedback, first_digest, lifecycle, personal_data, subscribers, tokens
from ..models import FeedbackKind, Subscriber, SubscriberStatus
from ..subscribers import InvalidForm
from ..tokens import Purpose
from .context import current_settings, now
from .forms import check_csrf, form_choices
from .responses import LinkError

PAPER_ID = "int(max=2147483647):paper_id"  # the largest id a database INTEGER holds

bp = Blueprint("links", __name__)


# --- confirm ------------------------------------------------------------------------------


@bp.get("/confirm/<token>")
def confirm_page(token: str) -> Any:
    claim = read_claim(Purpose.CONFIRM, token)
    with db.session_scope(current_settings()) as s:
        signup = lifecycle.request_of(s, claim)
        subscriber = subscribers.subscriber_by_id(s, signup.subscriber_id or 0)
        if subscriber.status is SubscriberStatus.ACTIVE:
            return confirmed(subscriber, already=True)
        return render_template("confirm.html", email=signup.email,
                               choices=lifecycle.preferences_of(signup),
                               weekdays=list(enumerate(subscribers.WEEKDAYS)))


@bp.post("/confirm/<token>")
def confirm(token: str) -> Any:
    check_csrf()
    claim = read_claim(Purpose.CONFIRM, token)
    with db.session_scope(current_settings()) as s:
        done = lifecycle.confirm_request(s, claim)
    # FIRST_DIGEST=send: today's digest, planned now that the confirmation is committed.
    started = first_digest.after_confirming(current_settings(), done.subscriber.id,
                                            done.already, now())
    return confirmed(done.subscriber, already=done.already, first_started=started)


# --- preferences --------------------------------------------------------------------------


@bp.get("/preferences/<token>")
def preferences_page(token: str) -> Any:
    subscriber = linked_subscriber(Purpose.PREFERENCES, token)
    return preferences_form(subscriber, values_of(subscriber), {},
                            saved=request.args.get("saved") == "1")


@bp.post("/preferences/<token>")
def preferences(token: str) -> Any:
    check_csrf()
    claim = read_claim(Purpose.PREFERENCES, token)
    with db.session_scope(current_settings()) as s:
        subscriber = subscribers.linked_subscriber(s, claim)
        try:
            prefs = subscribers.read_preferences(request.form, subscriber.time_zone,
                                                 subscriber.send_hour,
                                                 subscriber.papers_per_digest)
        except InvalidForm as exc:
            return preferences_form(subscriber, request.form, exc.errors), 400
        subscribers.update_preferences(s, subscriber.id, prefs,
                                       paused=request.form.get("paused") == "on")
    return redirect(f"/preferences/{token}?saved=1", code=303)


# --- your data: download it, or delete it all ----------------------------------------------


@bp.get("/preferences/<token>/data")
def download_data(token: str) -> Any:
    """Everything stored about the link's reader, as a JSON file (reading changes nothing)."""
    claim = read_claim(Purpose.PREFERENCES, token)
    with db.session_scope(current_settings()) as s:
        subscriber = subscribers.linked_subscriber(s, claim)
        data = personal_data.export_subscriber(s, subscriber.id, now())
    body = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    return Response(body, content_type="application/json; charset=utf-8", headers={
        "Content-Disposition": 'attachment; filename="paper-digest-my-data.json"',
        "X-Content-Type-Options": "nosniff",
    })


@bp.get("/preferences/<token>/delete")
def delete_page(token: str) -> Any:
    subscriber = linked_subscriber(Purpose.PREFERENCES, token)
    return render_template("delete.html", subscriber=subscriber,
                           preferences_url=f"/preferences/{token}")


@bp.post("/preferences/<token>/delete")
def delete_everything(token: str) -> Any:
    check_csrf()
    claim = read_claim(Purpose.PREFERENCES, token)
    with db.session_scope(current_settings()) as s:
        subscriber = subscribers.linked_subscriber(s, claim)
        deletion = personal_data.delete_subscriber(s, subscriber.id, now())
    return render_template("deleted.html", deletion=deletion)


# --- unsubscribe --------------------------------------------------------------------------


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str) -> Any:
    subscriber = linked_subscriber(Purpose.UNSUBSCRIBE, token)
    if subscriber.status not in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
        return unsubscribed(subscriber, token)
    return render_template("unsubscribe.html", subscriber=subscriber,
                           preferences_url=preferences_path(subscriber))


@bp.post("/unsubscribe/<token>")
def unsubscribe(token: str) -> Any:
    # RFC 8058: the mail provider POSTs "List-Unsubscribe=One-Click" with no cookie,
    # session or CSRF token; the signed link is the proof. The answer must not redirect.
    one_click = request.form.get("List-Unsubscribe") == "One-Click"
    if not one_click:
        check_csrf()
    try:
        claim = read_claim(Purpose.UNSUBSCRIBE, token)
    except LinkError as exc:
        if one_click:
            return plain_text(f"{exc}\n", status=exc.status)
        raise
    with db.session_scope(current_settings()) as s:
        try:
            subscriber = lifecycle.unsubscribe(
                s, subscribers.linked_subscriber(s, claim).id,
                source="web:one-click" if one_click else "web",
            )
        except subscribers.UnknownSubscriber as exc:
            if one_click:
                return plain_text(f"{exc}\n", status=404)
            raise
        if one_click:
            return plain_text("You are unsubscribed.\n")
        return unsubscribed(subscriber, token)


@bp.post("/unsubscribe/<token>/resubscribe")
def resubscribe(token: str) -> Any:
    check_csrf()
    claim = read_claim(Purpose.UNSUBSCRIBE, token)
    with db.session_scope(current_settings()) as s:
        subscriber = lifecycle.resubscribe(s, subscribers.linked_subscriber(s, claim).id)
        return render_template("resubscribed.html", subscriber=subscriber,
                               preferences_url=preferences_path(subscriber))


# --- feedback: paper links, "more / less like this" ---------------------------------------


@bp.get(f"/feedback/<token>/<{PAPER_ID}>/<any(open, pdf):target>")
def follow_paper(token: str, paper_id: int, target: str) -> Any:
    # The one GET that records something: a click is only a click if following the link
    # counts it. Link scanners that open every link are told apart in feedback.py.
    destination = feedback.follow_link(current_settings(), token, paper_id, target, now(),
                                       record_click=request.method == "GET")
    if destination is None:
        raise LinkError("This paper is no longer here.", 404)
    if not destination.redirect:
        # Not our reader's link, and a host the paper's source does not use: show it,
        # never send a visitor there from our address.
        return render_template("leaving.html", url=destination.url)
    return redirect(destination.url, code=302)


@bp.get(f"/feedback/<token>/<{PAPER_ID}>/<any(more, less):vote>")
def vote_page(token: str, paper_id: int, vote: str) -> Any:
    claim = read_claim(Purpose.FEEDBACK, token)
    with db.session_scope(current_settings()) as s:
        subscriber = subscribers.linked_subscriber(s, claim)
        target = feedback.vote_target(s, subscriber.id, paper_id)
    return render_template("feedback.html", target=target, vote=vote, recorded=False,
                           token=token)


@bp.post(f"/feedback/<token>/<{PAPER_ID}>/<any(more, less):vote>")
def record_vote(token: str, paper_id: int, vote: str) -> Any:
    check_csrf()
    claim = read_claim(Purpose.FEEDBACK, token)
    with db.session_scope(current_settings()) as s:
        subscriber = subscribers.linked_subscriber(s, claim)
        feedback.record(s, subscriber.id, paper_id, FeedbackKind(vote), now())
        target = feedback.vote_target(s, subscriber.id, paper_id)
        preferences_url = preferences_path(subscriber)
    return render_template("feedback.html", target=target, vote=vote, recorded=True,
                           token=token, preferences_url=preferences_url)


# --- what the link views share ------------------------------------------------------------


def read_claim(purpose: Purpose, token: str) -> tokens.Claim:
    """Whose a link is, if it is genuine and unexpired; a friendly LinkError otherwise."""
    try:
        return tokens.read_claim(current_settings(), purpose, token)
    except tokens.ExpiredToken as exc:
        raise LinkError(expired_message(purpose), 410) from exc
    except tokens.InvalidToken as exc:
        raise LinkError(
            "This link is not valid. Copy the whole link from the email, or use the one in "
            "your latest digest.", 400,
        ) from exc


def expired_message(purpose: Purpose) -> str:
    if purpose is Purpose.CONFIRM:
        return "This confirmation link has expired. Subscribe again to get a new one."
    return "This link has expired. Use the link in your latest digest."


def linked_subscriber(purpose: Purpose, token: str) -> Subscriber:
    """The subscriber a link was made for (UnknownSubscriber if they are gone)."""
    claim = read_claim(purpose, token)
    with db.session_scope(current_settings()) as s:
        subscriber = subscribers.linked_subscriber(s, claim)
        _ = subscriber.profile  # loaded before the session closes
        return subscriber


def preferences_path(subscriber: Subscriber) -> str:
    token = tokens.make_token(current_settings(), Purpose.PREFERENCES, subscriber)
    return f"/preferences/{token}"


def values_of(subscriber: Subscriber) -> dict[str, str]:
    return {
        "topics": subscriber.profile.topics,
        "exclude": subscriber.profile.exclude,
        "trending_fallback": "on" if subscriber.profile.trending_fallback else "",
        "time_zone": subscriber.time_zone,
        "send_hour": str(subscriber.send_hour),
        "papers_per_digest": str(subscriber.papers_per_digest),
        "cadence": subscriber.cadence.value,
        "send_weekday": str(subscriber.send_weekday),
        "click_tracking": "on" if subscriber.click_tracking else "",
        "paused": "on" if subscriber.paused else "",
    }


def preferences_form(
    subscriber: Subscriber, values: Any, errors: dict[str, str], saved: bool = False
) -> str:
    unsubscribe_token = tokens.make_token(current_settings(), Purpose.UNSUBSCRIBE, subscriber)
    preferences_url = preferences_path(subscriber)
    return render_template("preferences.html", subscriber=subscriber, values=dict(values),
                           errors=errors, saved=saved,
                           unsubscribe_url=f"/unsubscribe/{unsubscribe_token}",
                           data_url=f"{preferences_url}/data",
                           delete_url=f"{preferences_url}/delete",
                           past_digests=past_digests_of(subscriber),
                           archive_days=current_settings().archive_link_days,
                           **form_choices())


def confirmed(subscriber: Subscriber, already: bool, first_started: bool = False) -> str:
    preferences_url = preferences_path(subscriber)
    return render_template("confirmed.html", subscriber=subscriber, already=already,
                           preferences_url=preferences_url, first_started=first_started,
                           first_digest=current_settings().first_digest,
                           first_digest_url=preferences_url.replace("/preferences/",
                                                                    "/first-digest/", 1))


def past_digests_of(subscriber: Subscriber) -> list[archive.PastDigest]:
    """The reader's digests still on the web, for the preferences page's list."""
    settings = current_settings()
    with db.session_scope(settings) as s:
        return archive.past_digests(s, settings, subscriber, now().date())


def unsubscribed(subscriber: Subscriber, token: str) -> str:
    can_return = lifecycle.can_resubscribe(subscriber)
    return render_template("unsubscribed.html", subscriber=subscriber, token=token,
                           can_return=can_return)


def plain_text(body: str, status: int = 200) -> Response:
    """The one-click POST's answer: a mail provider reads the status, not a page."""
    return Response(body, status=status, mimetype="text/plain")
