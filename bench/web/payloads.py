"""The requests the simulated clients send, built without locust so a test can check each one
against the app itself (locust patches the standard library with gevent when imported).

The webhook is signed from the documented scheme of the generic provider (README, "Provider
webhooks"), as another sender would, not with the library's helper: if the two drift apart the
benchmark shows 403s instead of hiding the difference.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
TITLE = re.compile(r"<title>\s*([^<]*?)\s*</title>", re.IGNORECASE)
RATE_LIMITED = "429 Too Many Requests (rate limit)"  # a failure counted apart from errors
ONE_CLICK_FORM = {"List-Unsubscribe": "One-Click"}  # RFC 8058's body, exactly
WEBHOOK_EVENT_TYPES = ("unsubscribe", "bounce", "complaint")

# What readers type: single topics, lists, an acronym alone, a long sentence.
TOPICS = (
    "LoRA, low-rank adaptation",
    "mixture of experts",
    "MoE",
    "neural ODEs, deep equilibrium models",
    "RLHF, reward models, preference optimisation",
    "diffusion models for video generation",
    "retrieval-augmented generation, long context",
    "interpretability of transformer layers, sparse autoencoders",
    "speculative decoding, KV cache compression, quantization",
    "graph neural networks",
    "vision-language models, multimodal reasoning",
    "state space models, Mamba",
)
TIME_ZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Australia/Sydney")


@dataclass(frozen=True)
class Targets:
    """What the runner hands the simulated clients: real signed links and known addresses."""

    unsubscribe_paths: list[str]  # /unsubscribe/<token>, as the library signs them
    webhook_addresses: list[str]  # seeded subscribers the webhook events are about
    webhook_secret: str

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Targets:
        return cls(**json.loads(path.read_text()))


def csrf_token(page_html: str) -> str | None:
    """The subscribe form's CSRF token, as a browser would submit it."""
    match = CSRF_FIELD.search(page_html)
    return match.group(1) if match else None


def what_came_back(status: int, body: str) -> str:
    """A short, stable description of an unexpected answer: failures are grouped by it."""
    title = TITLE.search(body)
    summary = title.group(1) if title else (body.strip().splitlines() or [""])[0]
    return f"HTTP {status}: {summary[:100]}"


def preview_query(rng: random.Random) -> dict[str, str]:
    return {"topics": rng.choice(TOPICS)}


def subscribe_form(csrf: str, rng: random.Random) -> dict[str, str]:
    """A filled-in subscribe form for a new address (so each one earns a confirmation email)."""
    return {
        "csrf_token": csrf,
        "email": f"load-{uuid.uuid4().hex[:20]}@example.org",
        "topics": rng.choice(TOPICS),
        "time_zone": rng.choice(TIME_ZONES),
        "send_hour": str(rng.randrange(24)),
        "papers_per_digest": str(rng.choice((5, 10, 15))),
    }


def generic_webhook(
    secret: str, address: str, event_type: str, timestamp: int
) -> tuple[bytes, dict[str, str]]:
    """One signed event for POST /webhooks/generic: (body, headers). Each has a new event id,
    so no two requests are alike (a repeated one is refused as a replay)."""
    event = {"id": uuid.uuid4().hex, "type": event_type, "email": address, "permanent": True}
    body = json.dumps({"events": [event]}).encode()
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    headers = {
        "Content-Type": "application/json",
        "X-Digest-Timestamp": str(timestamp),
        "X-Digest-Signature": "sha256=" + mac.hexdigest(),
    }
    return body, headers
