"""Reading comfort in a real browser (Debian's chromium, driven by Playwright): every email in
a light and a dark colour scheme, and the file outbox's index on a phone.

Screenshots go to $SCREENSHOT_DIR, or test-artifacts/reading-comfort/ (kept out of git); the
test prints where, to be looked at.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from digest.mail.message import message_id_for
from digest.mail.outbox import FileSender
from digest.render.plain import RenderedEmail, email_template_names, render_digest, render_email
from digest.settings import PROJECT_DIR

from .conftest import make_settings
from .mail.emails import make_email
from .test_render import make_context, make_item, sample_context
from .test_web_browser import browser as chromium

browser = chromium  # the fixture: Debian's chromium through Playwright

SCREENSHOTS = Path(
    os.environ.get("SCREENSHOT_DIR") or PROJECT_DIR / "test-artifacts" / "reading-comfort"
)
# WCAG 2 AA: 4.5:1 for text; every piece of text in an email must reach it in both schemes.
MIN_CONTRAST = 4.5

# Every visible element that holds text of its own: its colour, and the colour it sits on
# (the first ancestor with an opaque background). Hidden parts (the preview line) are left out.
TEXT_COLOURS_JS = """
() => {
  const seen = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    if (style.visibility !== 'visible' || style.display === 'none') continue;
    let back = null, node = el, opacity = 1;
    for (; node; node = node.parentElement) {
      const s = getComputedStyle(node);
      opacity *= parseFloat(s.opacity);
      const clear = /rgba\\(.*, 0\\)$|transparent/.test(s.backgroundColor);
      if (!back && !clear) back = s.backgroundColor;
    }
    if (opacity === 0 || parseFloat(style.fontSize) <= 1) continue;
    seen.push({text: el.textContent.trim().slice(0, 40), color: style.color,
               background: back || getComputedStyle(document.documentElement).backgroundColor});
  }
  return seen;
}
"""


def rgb(css: str) -> tuple[float, float, float]:
    numbers = [float(n) for n in re.findall(r"[\d.]+", css)[:3]]
    return numbers[0], numbers[1], numbers[2]


def luminance(css: str) -> float:
    """WCAG relative luminance of a CSS rgb() colour."""

    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb(css))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


@pytest.fixture(scope="module")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {SCREENSHOTS}")
    return SCREENSHOTS


def sample_emails() -> Iterator[tuple[str, RenderedEmail]]:
    """Each email type, the digest with its feedback links and the trending-fallback note."""
    yield "digest", render_digest(make_context(feedback_url="https://digest.test/feedback/tok"))
    yield (
        "digest-trending",
        render_digest(
            make_context(
                items=tuple(make_item(paper_id=i) for i in range(1, 4)), trending_fallback=True
            )
        ),
    )
    for name in email_template_names():
        if name != "digest":
            yield name, render_email(name, sample_context(name))


def look(launched: Any, html: str, scheme: str, width: int) -> tuple[Any, Any]:
    context = launched.new_context(color_scheme=scheme, viewport={"width": width, "height": 900})
    page = context.new_page()
    page.set_content(html)
    return context, page


@pytest.mark.parametrize("name, email", [pytest.param(*e, id=e[0]) for e in sample_emails()])
def test_every_email_is_readable_in_a_light_and_a_dark_colour_scheme(
    browser: Any, screenshots: Path, name: str, email: RenderedEmail
) -> None:
    colours: dict[str, dict[str, str]] = {}
    for scheme in ("light", "dark"):
        for width in (800, 390):
            context, page = look(browser, email.html, scheme, width)
            page.screenshot(
                path=str(screenshots / f"email-{name}-{scheme}-{width}.png"), full_page=True
            )
            seen = page.evaluate(TEXT_COLOURS_JS)
            assert seen, "no text found"
            poor = [
                (
                    s["text"],
                    s["color"],
                    s["background"],
                    round(contrast(s["color"], s["background"]), 2),
                )
                for s in seen
                if contrast(s["color"], s["background"]) < MIN_CONTRAST
            ]
            assert poor == [], f"{name} ({scheme}, {width}px): text hard to read: {poor}"
            colours[scheme] = {
                "page": page.evaluate("getComputedStyle(document.body).backgroundColor"),
                "card": page.evaluate(
                    "getComputedStyle(document.querySelector('.dm-card')).backgroundColor"
                ),
                "text": page.evaluate(
                    "getComputedStyle(document.querySelector('.dm-card td > div')).color"
                ),
            }
            context.close()
    for part in ("page", "card", "text"):
        assert colours["light"][part] != colours["dark"][part], part
    # Dark means dark: a dark page and card, light text.
    assert luminance(colours["dark"]["card"]) < 0.05 < luminance(colours["light"]["card"])
    assert luminance(colours["dark"]["text"]) > 0.5 > luminance(colours["light"]["text"])


def test_the_outbox_index_reads_well_on_a_phone(
    browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    addresses = [
        "ada@example.org",
        "grace.hopper@example.org",
        "katherine.johnson-goble.langley-research-center@mail.example.org",
    ]
    with FileSender(settings) as sender:
        for n, to in enumerate(addresses, start=1):
            for kind in ("digest", "confirm"):
                sender.send(
                    make_email(
                        settings,
                        n,
                        to=to,
                        kind=kind,
                        subject=f"Paper Digest for 23 Nov 2026: {n} new papers on LoRA, low-rank "
                        "adaptation and parameter-efficient fine-tuning",
                        message_id=message_id_for(settings, kind, n, date(2026, 11, 23)),
                    )
                )
        sender.send(make_email(settings, 9, date=make_email(settings).date - timedelta(days=1)))
    index = sender.index_path.as_uri()
    for width in (390, 1000):
        context = browser.new_context(viewport={"width": width, "height": 800})
        page = context.new_page()
        page.goto(index)
        page.screenshot(path=str(screenshots / f"outbox-index-{width}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        # No cell squeezed into a sliver: each part of a row is at least a short word wide.
        cells = page.evaluate("""[...document.querySelectorAll('tbody td')].map(td => {
            const r = td.getBoundingClientRect();
            return {cls: td.className, width: r.width, right: r.right, text: td.innerText};
        })""")
        assert cells and min(c["width"] for c in cells) >= 60, cells
        assert max(c["right"] for c in cells) <= width
        # An address that fits stays on one line; one that does not breaks where it must.
        lines = page.evaluate("""Object.fromEntries([...document.querySelectorAll('td.to')]
            .map(td => { const range = document.createRange(); range.selectNodeContents(td);
                         const tops = [...range.getClientRects()].map(r => Math.round(r.top));
                         return [td.innerText.trim(), new Set(tops).size]; }))""")
        assert lines[addresses[0]] == lines[addresses[1]] == 1, lines
        assert lines[addresses[2]] <= 3, lines  # 64 characters: letter by letter took dozens
        context.close()
