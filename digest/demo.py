"""The demo day (`digest demo`): the bundled sample papers and a few sample subscribers whose
topics show each kind of digest (matches, an exclusion, the trending fallback, no match).

Seeding is safe to run again: papers are upserted and an address already subscribed is left as
it is, so a second demo on the same day adds nothing and sends nobody a second digest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

from .settings import Settings

DEMO_SUBSCRIBERS: list[dict[str, Any]] = [
    {"email": "ada@example.org", "topics": "LoRA, low-rank adaptation, parameter-efficient "
     "fine-tuning", "papers_per_digest": 5},
    {"email": "grace@example.org", "topics": "diffusion models, image generation, "
     "text-to-image", "papers_per_digest": 5},
    {"email": "alan@example.org", "topics": "reinforcement learning, reward models, RLHF",
     "papers_per_digest": 5},
    {"email": "katherine@example.org", "topics": "vision transformers, object detection, "
     "segmentation", "exclude": "medical", "papers_per_digest": 5},
    {"email": "emmy@example.org", "topics": "graph neural networks, molecules",
     "papers_per_digest": 3},
    {"email": "barbara@example.org", "topics": "medieval poetry",
     "trending_fallback": True, "papers_per_digest": 3},
    {"email": "edsger@example.org", "topics": "sourdough baking"},
]


@dataclass(frozen=True)
class DemoSeed:
    """What seeding the demo added: the sample papers' ingest summary and new subscribers."""

    papers_summary: str
    subscribers_added: int

    def lines(self) -> list[str]:
        return [self.papers_summary,
                f"Sample subscribers: {len(DEMO_SUBSCRIBERS)} ({self.subscribers_added} new)."]


def demo_settings(settings: Settings) -> Settings:
    """The demo always writes to the file outbox, so it never mails the sample addresses."""
    return replace(settings, mail_backend="file")


def seed_demo(session: Session) -> DemoSeed:
    """Ingest the sample papers and add the sample subscribers not yet there."""
    from .ingest import load_sample_papers
    from .subscribers import add_subscriber, find_subscriber

    papers = load_sample_papers(session)
    added = 0
    for spec in DEMO_SUBSCRIBERS:
        if find_subscriber(session, spec["email"]) is None:
            add_subscriber(session, **spec)
            added += 1
    return DemoSeed(papers.summary(), added)
