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
from .test_web_browser import site as web_site

# The fixtures: Debian's chromium through Playwright, and the web app served on loopback.
browser, site = chromium, web_site

SCREENSHOTS = Path(
    os.environ.get("SCREENSHOT_DIR") or PROJECT_DIR / "test-artifacts" / "reading-comfort"
)
# WCAG 2 AA: 4.5:1 for text; every piece of text in an email must reach it in both schemes.
MIN_CONTRAST = 4.5

# Every visible element that holds text of its own: its colour, and the backgrounds it sits on
# (its own and its ancestors', up to the first opaque one). Hidden parts (the preview line)
# are left out.
TEXT_COLOURS_JS = """
() => {
  const seen = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    if (style.visibility !== 'visible' || style.display === 'none') continue;
    const layers = [];
    let opacity = 1, opaque = false;
    for (let node = el; node; node = node.parentElement) {
      const s = getComputedStyle(node);
      opacity *= parseFloat(s.opacity);
      const back = s.backgroundColor;
      const alpha = back.startsWith('rgba') ? parseFloat(back.split(',')[3]) : 1;
      if (!opaque && alpha > 0) { layers.push(back); opaque = alpha === 1; }
    }
    if (opacity === 0 || parseFloat(style.fontSize) <= 1) continue;
    if (!opaque) layers.push(getComputedStyle(document.documentElement).backgroundColor);
    seen.push({text: el.textContent.trim().slice(0, 40), color: style.color, layers: layers});
  }
  return seen;
}
"""


def rgb(css: str) -> tuple[float, float, float]:
    numbers = [float(n) for n in re.findall(r"[\d.]+", css)[:3]]
    return numbers[0], numbers[1], numbers[2]


def backdrop(layers: list[str]) -> str:
    """The colour a stack of backgrounds shows (the nearest first, the last one opaque)."""
    r, g, b = rgb(layers[-1])
    for layer in reversed(layers[:-1]):
        alpha = float(re.findall(r"[\d.]+", layer)[3]) if layer.startswith("rgba") else 1.0
        top = rgb(layer)
        r, g, b = (alpha * t + (1 - alpha) * c for t, c in zip(top, (r, g, b), strict=True))
    return f"rgb({r:.0f}, {g:.0f}, {b:.0f})"


def hard_to_read(page: Any) -> list[tuple[str, str, str, float]]:
    """The page's visible texts under WCAG AA contrast against what they sit on."""
    found = []
    for seen in page.evaluate(TEXT_COLOURS_JS):
        back = backdrop(seen["layers"])
        ratio = contrast(seen["color"], back)
        if ratio < MIN_CONTRAST:
            found.append((seen["text"], seen["color"], back, round(ratio, 2)))
    return found


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
            assert page.evaluate(TEXT_COLOURS_JS), "no text found"
            poor = hard_to_read(page)
            assert poor == [], f"{name} ({scheme}, {width}px): text hard to read: {poor}"
            colours[scheme] = scheme_colours(page)
            if scheme == "light" and width == 800:
                # Outlook.com darkens by itself and marks what it changed (data-ogsc for text,
                # data-ogsb for backgrounds) inside its reading pane: the dark colours apply.
                page.evaluate("""document.body.setAttribute('data-ogsc', '');
                                 document.body.setAttribute('data-ogsb', '')""")
                colours["outlook.com"] = scheme_colours(page)
                page.screenshot(
                    path=str(screenshots / f"email-{name}-outlook.com-dark.png"), full_page=True
                )
                assert hard_to_read(page) == [], f"{name} (Outlook.com dark)"
            context.close()
    for part in ("page", "card", "text"):
        assert colours["light"][part] != colours["dark"][part], part
    # Dark means dark: a dark page and card, light text.
    assert luminance(colours["dark"]["card"]) < 0.05 < luminance(colours["light"]["card"])
    assert luminance(colours["dark"]["text"]) > 0.5 > luminance(colours["light"]["text"])
    for part in ("card", "text", "link"):
        assert colours["outlook.com"][part] == colours["dark"][part], part


def scheme_colours(page: Any) -> dict[str, str]:
    """The colours of an email's parts: the page, a white section, its text and first link."""
    return dict(
        page.evaluate("""() => {
        const colour = (selector, property) =>
            getComputedStyle(document.querySelector(selector))[property];
        return {page: colour('body', 'backgroundColor'),
                card: colour('.dm-card', 'backgroundColor'),
                text: colour('.dm-card td > div', 'color'),
                link: colour('.dm-card a, .footer a', 'color')};
    }""")
    )


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


def test_the_web_pages_follow_the_readers_colour_scheme(
    site: tuple[str, Any], browser: Any, screenshots: Path
) -> None:
    base, _ = site
    backgrounds = {}
    for scheme in ("light", "dark"):
        for width in (1200, 390):
            context = browser.new_context(
                color_scheme=scheme, viewport={"width": width, "height": 900}
            )
            page = context.new_page()
            page.goto(base + "/")
            page.fill("#email", "not an address")
            page.fill("#topics", "LoRA, low-rank adaptation")
            page.wait_for_selector("#preview-list li .title")
            page.click("button[type=submit]")
            page.wait_for_selector(".field-error")
            page.screenshot(
                path=str(screenshots / f"web-subscribe-{scheme}-{width}.png"), full_page=True
            )
            poor = hard_to_read(page)
            assert poor == [], f"subscribe page ({scheme}, {width}px): hard to read: {poor}"
            backgrounds[scheme] = page.evaluate("getComputedStyle(document.body).backgroundColor")
            context.close()
    assert luminance(backgrounds["dark"]) < 0.05 < luminance(backgrounds["light"])
