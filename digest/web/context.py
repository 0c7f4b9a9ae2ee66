"""What a view reads besides its own arguments: the deployment's settings, the clock, who is
asking, and a bounded `?limit=`.

`current_settings()` is the one way views and their helpers reach the settings `create_app`
was given, so no view needs to be a closure over them.
"""

from __future__ import annotations

from datetime import datetime, timezone

from flask import abort, current_app, request

from ..settings import Settings

SETTINGS_KEY = "DIGEST_SETTINGS"


def current_settings() -> Settings:
    """The settings of the app answering this request."""
    return current_app.config[SETTINGS_KEY]  # type: ignore[no-any-return]


def now() -> datetime:
    return datetime.now(timezone.utc)


def client_address() -> str:
    """Who the per-client rate limit counts: the remote address (see TRUSTED_PROXY_COUNT)."""
    return request.remote_addr or "unknown"


def limit_arg(most: int, default: int = 5) -> int:
    """`?limit=`: a whole number (ASCII digits; "²" is a digit to Python, not to int),
    capped at `most`; 400 otherwise."""
    raw = request.args.get("limit", "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw[:6]) < 1:
        abort(400, description=f"limit must be a whole number from 1 to {most}.")
    return min(int(raw[:6]), most)
