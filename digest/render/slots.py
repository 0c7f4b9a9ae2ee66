"""The day renderer's slots: which digest template variable each placeholder stands for.

`day.DayRenderer` compiles the digest once per day with a random marker (a slot) where each
subscriber's value goes and fills the markers per subscriber. A variable the digest body reads
that is neither the same for the whole day nor filled per subscriber would be compiled from one
subscriber's value into everyone's digest. `check_body_variables` reads what the templates use
with `jinja2.meta` and refuses to start the renderer when a variable is not accounted for here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache

from jinja2 import Environment, meta, nodes

# The templates one digest body renders (what they extend, import or include is followed).
DIGEST_BODIES = ("email/digest/body.mjml", "email/digest/body.txt")

# How the day renderer fills every variable the digest body templates may read.
# The same for every digest of the day (the renderer's own day and site), like the globals.
PER_DAY = frozenset({"day", "site_url"})
# One skeleton per value (see `day.Variant`). `count` is read only as zero or not: the count a
# reader sees is `count_phrase`.
PER_VARIANT = frozenset({"count", "trending_fallback", "click_tracking", "weekly"})
# Filled per subscriber into the compiled skeleton (`topics`, `feedback_href` and
# `archive_href` also choose the variant, as the templates test whether they are empty).
PER_SUBSCRIBER = frozenset({
    "preview", "topics", "count_phrase", "is_are", "recipient", "preferences_href",
    "unsubscribe_href", "preferences_url", "unsubscribe_url", "feedback_href", "archive_url",
    "archive_href",
})
# The papers: each card is compiled once per day and the cards are joined per subscriber.
PER_CARD = frozenset({"items", "rank_slot", "cards_text"})

# Every placeholder: the per-subscriber variables, the subscriber's short topics in the subject
# and preview lines, and a card's rank and why line, and where the text cards go.
SLOT_NAMES = (*sorted(PER_SUBSCRIBER), "topics_short", "rank", "why", "cards")


class UnfilledVariableError(RuntimeError):
    """A digest template reads a variable the day renderer would compile once for everyone."""


@cache
def check_body_variables(env: Environment) -> None:
    """Raise `UnfilledVariableError` if a digest body template reads a variable that is neither
    a global, a per-day value, a variant, a per-subscriber slot nor the cards."""
    known = PER_DAY | PER_VARIANT | PER_SUBSCRIBER | PER_CARD | env.globals.keys()
    for template, variables in body_variables(env).items():
        unknown = sorted(variables - known)
        if unknown:
            raise UnfilledVariableError(
                f"templates/{template} reads {', '.join(unknown)}, which the day renderer would "
                "compile from one subscriber into every digest: fill it per subscriber in "
                "digest/render/slots.py and digest/render/day.py, or stop reading it"
            )


def body_variables(env: Environment) -> dict[str, set[str]]:
    """Each template a digest body renders -> the variables it reads from its context."""
    assert env.loader is not None
    found: dict[str, set[str]] = {}
    pending = list(DIGEST_BODIES)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        tree = env.parse(env.loader.get_source(env, name)[0])
        found[name] = meta.find_undeclared_variables(tree) - imported_names(tree)
        for referenced in meta.find_referenced_templates(tree):
            if referenced is None:
                raise UnfilledVariableError(
                    f"templates/{name} includes a template chosen at render time, whose "
                    "variables cannot be checked: name the template in full"
                )
            pending.append(referenced)
    return found


def imported_names(tree: nodes.Template) -> set[str]:
    """Names a template imports (`{% import %}`, `{% from ... import %}`): `meta` counts them
    as undeclared in the blocks of a template that extends another, yet they are no variable."""
    names: set[str] = set()
    for module in tree.find_all(nodes.Import):
        names.add(module.target)
    for imported in tree.find_all(nodes.FromImport):
        names.update(name if isinstance(name, str) else name[1] for name in imported.names)
    return names


def segments(text: str, slots: Mapping[str, str]) -> tuple[str, ...]:
    """`text` cut at each slot's marker: literal, slot name, literal, ... (odd: slot names)."""
    names = {marker: name for name, marker in slots.items()}
    # Longest first: one marker may begin with another ("...paragraph1" and "...paragraph10").
    markers = sorted(slots.values(), key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, markers)))
    parts: list[str] = []
    last = 0
    for match in pattern.finditer(text):
        parts += [text[last : match.start()], names[match.group(0)]]
        last = match.end()
    parts.append(text[last:])
    return tuple(parts)


def fill(parts: tuple[str, ...], values: Mapping[str, str]) -> str:
    """`segments` joined again with each slot replaced by its value."""
    if len(parts) == 3:  # one slot: most of a digest's runs of lines
        return parts[0] + values[parts[1]] + parts[2]
    joined = list(parts)  # a dozen of these per email: an index loop beats a generator
    for i in range(1, len(joined), 2):
        joined[i] = values[joined[i]]
    return "".join(joined)
