"""Our emails as a spam filter reads their HTML: no text in a colour it takes for hidden.

SpamAssassin's HTML parser (Mail::SpamAssassin::HTML) follows the text colour and background
of each piece of text through the inline styles and scores HTML_FONT_LOW_CONTRAST when they are
the same or too close, the way spam hides words. Hidden text of our own would trip it too:
MJML's <mj-preview> writes the preview line white on white, which SpamAssassin held against
every email we sent (+0.7) until `_base.mjml` wrote that line itself. These tests read the HTML
the way that parser does, in pure Python, so neither SpamAssassin nor npm is needed to run them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from html.parser import HTMLParser

import pytest
from mjml import mjml2html

from digest.render.plain import RenderedEmail, email_template_names, render_digest, render_email

from .test_render import make_card, make_context, make_item, sample_context

# SpamAssassin's threshold: below this brightness-weighted distance the text counts as hidden.
MIN_DISTANCE = 12.0
# Elements whose colours SpamAssassin follows, and the attributes it reads on each.
STYLED = {"body", "font", "table", "tr", "th", "td", "span", "p", "div", "a"}
BGCOLOR_ATTRIBUTE = {"body", "table", "tr", "th", "td"}
STYLE_ATTRIBUTE = {"table", "tr", "th", "td", "span", "p", "div", "a"}
BLANK = re.compile(r"[ \t\n\r\f\v\xa0]*")
HEX = re.compile(r"#?([0-9a-f]{3}|[0-9a-f]{6})")
RGB = re.compile(r"rgb\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)")
NAMED = {"white": "#ffffff", "black": "#000000"}


def colour(value: str) -> str | None:
    """`value` as #rrggbb; None for a colour this check does not know (a spam filter may
    read it as invalid, which is scored too: write colours in hex)."""
    value = re.sub(r"\s*!\s*important$", "", value.strip().lower())
    if value in NAMED:
        return NAMED[value]
    if match := HEX.fullmatch(value):
        digits = match.group(1)
        return "#" + (digits if len(digits) == 6 else "".join(d * 2 for d in digits))
    if match := RGB.fullmatch(value):
        return "#" + "".join(f"{min(int(n), 255):02x}" for n in match.groups())
    return None


def distance(fg: str, bg: str) -> float:
    """SpamAssassin's contrast measure: the RGB distance weighted by each channel's share of
    brightness (the most is about 191)."""
    (r1, g1, b1), (r2, g2, b2) = (
        (int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)) for c in (fg, bg)
    )
    return float(
        ((0.2126 * (r1 - r2)) ** 2 + (0.7152 * (g1 - g2)) ** 2 + (0.0722 * (b1 - b2)) ** 2) ** 0.5
    )


@dataclass(frozen=True)
class Run:
    """A piece of text and the colours a spam filter gives it."""

    text: str
    fg: str
    bg: str


class SpamFilterColours(HTMLParser):
    """Each piece of text with its colour and background, as SpamAssassin's parser works them
    out: black on white to start with; inline `color`, `background-color` and `background` of
    the elements above it (and `bgcolor`, which a browser honours); transparent takes the
    colour below. Conditional comments for Outlook are comments here as there."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str, str]] = [("", "#000000", "#ffffff")]
        self.runs: list[Run] = []
        self.unknown: list[tuple[str, str]] = []  # (tag, colour) this check cannot read
        self._skip = 0
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script"):
            self._skip += 1
        if tag not in STYLED:
            return
        if tag in ("td", "tr"):  # an unclosed cell or row ends where the next one starts
            closes = {"font", "td"} if tag == "td" else {"font", "td", "tr"}
            while len(self.stack) > 1 and self.stack[-1][0] in closes:
                self.stack.pop()
        _, fg, bg = self.stack[-1]
        values = dict(attrs)
        if tag in BGCOLOR_ATTRIBUTE and values.get("bgcolor"):
            bg = self._read(tag, values["bgcolor"] or "", bg)
        if tag == "font" and values.get("color"):
            fg = self._read(tag, values["color"] or "", fg)
        if tag in STYLE_ATTRIBUTE:
            fg, bg = self._style(tag, values.get("style") or "", fg, bg)
        self.stack.append((tag, fg, bg))

    def _style(self, tag: str, style: str, fg: str, bg: str) -> tuple[str, str]:
        """The colours after an inline style, read one declaration at a time."""
        new_fg = None
        for declaration in style.split(";"):
            name, _, value = (part.strip().lower() for part in declaration.partition(":"))
            if name == "color":
                new_fg = value
            elif name == "background-color":
                bg = self.stack[-1][2] if value == "transparent" else self._read(tag, value, bg)
            elif name == "background":
                bg = next((c for c in map(colour, value.split()) if c), bg)
        if new_fg == "transparent":
            return bg, bg
        if new_fg and new_fg != "inherit":
            return self._read(tag, new_fg, fg), bg
        return fg, bg

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._skip -= 1
        if tag in STYLED and tag != "body" and any(t == tag for t, _, _ in self.stack[1:]):
            while self.stack.pop()[0] != tag:
                pass

    def handle_data(self, data: str) -> None:
        if not self._skip and BLANK.sub("", data):
            _, fg, bg = self.stack[-1]
            self.runs.append(Run(" ".join(data.split()), fg, bg))

    def _read(self, tag: str, value: str, before: str) -> str:
        read = colour(value)
        if read is None:
            self.unknown.append((tag, value))
            return before
        return read


def hidden_looking(html: str) -> list[str]:
    """What a spam filter would take for hidden text in `html`, or colours it cannot read."""
    page = SpamFilterColours(html)
    found = [
        f"{run.text[:60]!r}: {run.fg} on {run.bg} ({distance(run.fg, run.bg):.1f})"
        for run in page.runs
        if distance(run.fg, run.bg) < MIN_DISTANCE
    ]
    return found + [f"<{tag}> colour {value!r}: write it in hex" for tag, value in page.unknown]


def digest_variants() -> dict[str, RenderedEmail]:
    """The digest in each of its shapes: every block the template may show appears in one."""
    rich = make_item(
        make_card(
            7,
            ai_summary="A one-line summary.",
            github_repo="https://github.com/ada/lora",
            stars=1200,
            organization="Analytical Engines Ltd",
            older_than_window=True,
        )
    )
    links = dict(feedback_url="https://digest.test/f/tok", archive_url="https://digest.test/a/tok")
    return {
        "daily": render_digest(make_context(**links)),
        "daily, tracked, rich card": render_digest(
            make_context(items=(rich, make_item(paper_id=2)), click_tracking=True, **links)
        ),
        "weekly": render_digest(make_context(weekly=True, **links)),
        "weekly, trending": render_digest(make_context(weekly=True, trending_fallback=True)),
        "no papers": render_digest(make_context(items=())),
    }


@cache
def every_email() -> dict[str, RenderedEmail]:
    emails = {name: render_email(name, sample_context(name)) for name in email_template_names()}
    emails.update({f"digest ({shape})": email for shape, email in digest_variants().items()})
    return emails


@pytest.mark.parametrize("name", sorted(every_email()))
def test_no_email_has_text_a_spam_filter_takes_for_hidden(name: str) -> None:
    email = every_email()[name]
    assert SpamFilterColours(email.html).runs, "no text read: the check would prove nothing"
    assert hidden_looking(email.html) == []


def test_the_preview_line_is_there_hidden_but_not_white_on_white() -> None:
    """The preview line stays first in the body and hidden from the reader."""
    html = render_digest(make_context()).html
    body = html[html.index("<body") :]
    first = SpamFilterColours(body).runs[0]
    assert first.text.startswith("10 new papers on LoRA, activation sparsity")
    assert distance(first.fg, first.bg) >= MIN_DISTANCE
    hidden = re.search(r'<div style="display:none;[^"]*">10 new papers', body)
    assert hidden and "opacity:0" in hidden.group(0) and "max-height:0px" in hidden.group(0)


def test_the_check_finds_what_spamassassin_scored() -> None:
    """MJML's own preview (white on white) and text in the colour of its background are
    caught, so a pass above means something."""
    preview = str(
        mjml2html(
            "<mjml><mj-head><mj-preview>Hidden words</mj-preview></mj-head>"
            "<mj-body><mj-section><mj-column><mj-text>Seen</mj-text></mj-column></mj-section>"
            "</mj-body></mjml>",
            disable_comments=True,
        )
    )
    assert [line.split(":")[0] for line in hidden_looking(preview)] == ["'Hidden words'"]
    assert hidden_looking(
        '<div style="background:#14213d"><span style="color:#15223e">x</span>'
        '<a style="color:#ffffff">y</a></div>'
    ) == ["'x': #15223e on #14213d (0.7)"]
    assert hidden_looking('<p style="color:rebeccapurple">z</p>') == [
        "<p> colour 'rebeccapurple': write it in hex"
    ]
