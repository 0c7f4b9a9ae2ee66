"""Reading a source: a local file, or an http(s) URL fetched by `fetch` with a total
deadline, a size cap and public addresses only."""

from __future__ import annotations

import logging
from pathlib import Path

from ..fetch import FetchError, FetchLimits, fetch
from .records import IngestError, one_line

log = logging.getLogger(__name__)

MAX_BYTES = 50 * 1024 * 1024


def read_source(
    path_or_url: str,
    timeout: float,
    max_bytes: int = MAX_BYTES,
    allow_private_networks: bool = False,
) -> bytes:
    """Return the bytes of a local file or an http(s) URL, at most `max_bytes` of them.

    A source is a URL only when it starts with http:// or https://; anything else with "://" is
    refused, and the rest are paths. `timeout` is the whole fetch's deadline.
    """
    scheme = path_or_url.partition("://")[0].lower() if "://" in path_or_url else ""
    if scheme in ("http", "https"):
        limits = FetchLimits(timeout, max_bytes, allow_private_networks)
        try:
            return fetch(path_or_url, limits)
        except FetchError as exc:
            raise IngestError(str(exc)) from None
    if "://" in path_or_url:
        raise IngestError(
            f"{one_line(path_or_url)[:200]}: only http:// and https:// URLs can be fetched; "
            "give a local file by its path instead."
        )
    return _read_file(Path(path_or_url), max_bytes)


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        if path.is_dir():
            raise IngestError(f"{path}: is a directory; give the files in it instead.")
        if not path.exists():
            raise IngestError(
                f"{path}: no such file; check the path (a URL must start with http:// or "
                "https://)."
            )
        if not path.is_file():
            raise IngestError(f"{path}: not a regular file (a device, pipe or socket).")
        if path.stat().st_size > max_bytes:
            raise IngestError(f"{path}: larger than {max_bytes:,} bytes; is this the right file?")
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)  # files such as /proc's report no size
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise IngestError(f"{one_line(str(path))[:200]}: cannot be read ({reason}).") from None
    if len(data) > max_bytes:
        raise IngestError(f"{path}: larger than {max_bytes:,} bytes; is this the right file?")
    return data

