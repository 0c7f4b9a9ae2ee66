"""The bench's best cases per email: each stage (HTML, text, MIME) timed the naive way, our way
and the library's best way, in the same run, so that the ratio says how far from the best we are."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ..settings import Settings

Timing = tuple[str, float, float, float]  # (stage, naive, ours, best) seconds per email


def stage_timings(
    renderer: Any, contexts: Sequence[Any], messages: Sequence[Any], settings: Settings
) -> list[Timing]:
    """(stage, naive, ours, best) seconds per email for render, text and MIME."""
    from ..render.plain import digest_template_context

    for ctx in contexts:  # warm the day's caches, as the first batches do
        renderer.render(ctx)
    cycle = [(ctx, digest_template_context(ctx, with_cards=False)) for ctx in contexts]
    return [html_timing(renderer, cycle), text_timing(renderer, cycle),
            mime_timing(messages, settings)]


def seconds_each(fn: Callable[[Any], object], items: Sequence[Any], rounds: int = 5) -> float:
    """Seconds per item of `fn` over `items`, over `rounds` rounds."""
    start = time.perf_counter()
    for _ in range(rounds):
        for item in items:
            fn(item)
    return (time.perf_counter() - start) / (rounds * len(items))


def html_timing(renderer: Any, cycle: Sequence[tuple[Any, dict[str, Any]]]) -> Timing:
    """HTML. Best case: the skeleton and each card compiled once per day (the same compiled
    pieces as ours), each made a Jinja template; per email Jinja fills the subscriber's parts
    (their cards, ranks, reasons, links, address, topics) into them."""
    from jinja2 import Environment
    from markupsafe import Markup, escape

    from ..render.plain import ascii_references, render_digest
    from ..render.slots import PER_SUBSCRIBER

    def in_ascii(value: Any) -> Markup:  # escaped, then the body's ASCII, as ours is
        return Markup(ascii_references(str(escape(value))))

    jinja = Environment(autoescape=True, finalize=in_ascii)
    templates: dict[tuple[str, ...], Any] = {}

    def template(segments: tuple[str, ...]) -> Any:
        if segments not in templates:
            templates[segments] = jinja.from_string("".join(
                "{{ " + part + " }}" if i % 2 else "{% raw %}" + part + "{% endraw %}"
                for i, part in enumerate(segments)))
        return templates[segments]

    def best_html(c: tuple[Any, dict[str, Any]]) -> str:
        ctx, context = c
        skeleton, units = renderer.compiled(ctx, context)
        cards = "".join(
            template(unit).render(rank=rank, why=item.why, feedback_href=context["feedback_href"])
            for rank, (unit, item) in enumerate(zip(units, ctx.items, strict=True), start=1))
        values = {name: context[name] for name in PER_SUBSCRIBER}
        return template(skeleton.head).render(values) + cards + template(
            skeleton.tail).render(values)

    for c in cycle:  # compile the templates before timing, as the day's caches are
        assert best_html(c) == renderer.html(c[0], dict(c[1])), "best case must be the same email"
    return ("render HTML per email (best: compiled once + Jinja fill)",
            seconds_each(lambda c: render_digest(c[0]), cycle, 1),
            seconds_each(lambda c: renderer.html(c[0], dict(c[1])), cycle),
            seconds_each(best_html, cycle))


def text_timing(renderer: Any, cycle: Sequence[tuple[Any, dict[str, Any]]]) -> Timing:
    """Text and its quoted-printable body (ours encodes a card's own lines once a day). Best
    case: each paper's text wrapped once, joined per subscriber and encoded whole."""
    import binascii
    import textwrap

    from ..mail.mime import quoted_printable
    from ..render.plain import card_text

    prewrapped = {item.card.paper_id: textwrap.fill(item.card.abstract, 72)
                  for ctx, _ in cycle for item in ctx.items}

    def naive_text(c: tuple[Any, dict[str, Any]]) -> bytes:
        return quoted_printable("".join(card_text(i.card, r, i.why)
                                        for r, i in enumerate(c[0].items, 1)))

    def best_text(c: tuple[Any, dict[str, Any]]) -> bytes:
        text = "\n\n".join(prewrapped[i.card.paper_id] for i in c[0].items)
        return binascii.b2a_qp(text.encode(), quotetabs=False, istext=True, header=False)

    return ("plain text + its quoted-printable per email (best: pre-wrapped join, encoded)",
            seconds_each(naive_text, cycle, 1),
            seconds_each(lambda c: renderer.text_and_quoted(c[0], dict(c[1])), cycle),
            seconds_each(best_text, cycle))


def mime_timing(messages: Sequence[Any], settings: Settings) -> Timing:
    """MIME. Best case: fixed headers, the text's quoted-printable body (as the renderer
    encoded it, as ours takes it) and the HTML in 7-bit lines (as ours sends a page whose head
    is ASCII), joined as bytes."""
    import binascii
    from email.message import EmailMessage

    from ..mail import message_bytes

    def naive_mime(m: Any) -> bytes:
        msg = EmailMessage()
        msg["Subject"], msg["To"], msg["From"] = m.subject, m.to, settings.mail_from
        msg.set_content(m.text)
        msg.add_alternative(m.html, subtype="html")
        return msg.as_bytes()

    def best_mime(m: Any) -> bytes:
        return b"".join((b"From: x\r\nTo: y\r\nSubject: z\r\n\r\n--b\r\n",
                         m.text_quoted or binascii.b2a_qp(m.text.encode(), istext=True),
                         b"\r\n--b\r\n",
                         m.html.encode("ascii", "xmlcharrefreplace").replace(b"><", b">\r\n<"),
                         b"\r\n--b--\r\n"))

    return ("build MIME per email (best: direct bytes)",
            seconds_each(naive_mime, messages, 1),
            seconds_each(lambda m: message_bytes(settings, m), messages),
            seconds_each(best_mime, messages))
