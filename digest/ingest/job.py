"""The whole ingest job: each source read, parsed and stored in its own transaction, with a
report of what became of it; one source's failure never stops the others."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from .. import metrics
from .connectors import ConnectorOptions, Pacer, harvest, is_connector, with_fetch_limits
from .formats import parse
from .records import IngestError, Note, ParseResult, Rejection
from .sources import read_source
from .upsert import upsert_papers

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

SAMPLE_PAPERS = Path(__file__).resolve().parent.parent / "sample_data" / "papers.txt"
# Longer report lists are summarised: the operator needs the pattern, not ten thousand lines.
REPORT_LIST_MAX = 20


@dataclass
class SourceReport:
    """What became of one source: its counts, rejections and notes, or the error that stopped it."""

    origin: str
    format: str | None = None
    records: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)  # records kept with a change (a cut)
    error: str | None = None  # one line: names the source, says what went wrong and what to do
    skipped: int = 0  # entries a connector passed over on purpose, `skipped_why`
    skipped_why: str = ""

    def line(self) -> str:
        if self.error:
            return f"FAILED {self.error}"
        changed = f", {len(self.notes)} changed" if self.notes else ""
        skipped = f", {self.skipped} skipped ({self.skipped_why})" if self.skipped else ""
        return (
            f"{self.origin} ({self.format}): {self.records} records, {self.inserted} inserted, "
            f"{self.updated} updated, {self.unchanged} unchanged, {len(self.rejected)} rejected"
            f"{changed}{skipped}"
        )

    def details(self) -> list[str]:
        """One line per rejected record and per change, the longest lists summarised."""
        return [
            *_listed("rejected", self.rejected),
            *_listed("changed", self.notes),
        ]


def _listed(label: str, items: Sequence[Rejection | Note]) -> list[str]:
    lines = [f"  {label} {item}" for item in items[:REPORT_LIST_MAX]]
    if len(items) > REPORT_LIST_MAX:
        lines.append(f"  ... and {len(items) - REPORT_LIST_MAX:,} more {label}")
    return lines


@dataclass
class IngestReport:
    sources: list[SourceReport] = field(default_factory=list)

    @property
    def inserted(self) -> int:
        return sum(s.inserted for s in self.sources)

    @property
    def updated(self) -> int:
        return sum(s.updated for s in self.sources)

    @property
    def unchanged(self) -> int:
        return sum(s.unchanged for s in self.sources)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.sources)

    @property
    def rejected(self) -> list[Rejection]:
        return [r for s in self.sources for r in s.rejected]

    @property
    def notes(self) -> list[Note]:
        return [n for s in self.sources for n in s.notes]

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.sources if s.error]

    @property
    def ok(self) -> bool:
        """True when every source could be read (rejected records alone do not count)."""
        return not self.errors

    def summary(self) -> str:
        """A few lines for the CLI: one per source, its rejections and changes, then totals."""
        lines: list[str] = []
        for source in self.sources:
            lines.append(source.line())
            lines.extend(source.details())
        changed = f", {len(self.notes)} changed" if self.notes else ""
        lines.append(
            f"total: {self.inserted} inserted, {self.updated} updated, {self.unchanged} "
            f"unchanged{changed}, {len(self.rejected)} rejected, {len(self.errors)} failed sources"
        )
        return "\n".join(lines)


def ingest(
    session: Session,
    sources: Sequence[str],
    fmt: str | None = None,
    timeout: float = 20.0,
    allow_private_networks: bool = False,
    connectors: ConnectorOptions | None = None,
) -> IngestReport:
    """Read, parse and store each source, committing per source; a broken one is reported.

    A source is a file, a URL, or a connector's name (`arxiv:cs.CL`, `daily-papers`, ...: see
    `connectors`, configured by `connectors`). `timeout` is each URL's whole deadline;
    `allow_private_networks` lets URLs reach loopback and private addresses
    (INGEST_ALLOW_PRIVATE_NETWORKS).
    """
    report = IngestReport()
    options = with_fetch_limits(connectors, timeout, allow_private_networks)
    pacer = Pacer(options.arxiv_api_delay_seconds)  # one per run: arXiv's limit is per client
    for origin in sources:
        source = SourceReport(origin=origin)
        report.sources.append(source)
        try:
            if is_connector(origin):
                _harvest_source(session, source, options, pacer)
            else:
                _ingest_source(session, source, fmt, timeout, allow_private_networks)
        except IngestError as exc:
            source.error = _error_line(str(exc))
        except SQLAlchemyError as exc:
            session.rollback()
            cause = getattr(exc, "orig", None) or exc
            source.error = _error_line(
                f"{origin}: the database refused its papers ({type(exc).__name__}: {cause}); "
                "check the database, then ingest this source again."
            )
        except Exception as exc:
            # Every known way an input can fail is handled above; this keeps the other
            # sources going if one finds a new way, and the log keeps the traceback.
            session.rollback()
            log.exception("ingest of %s failed unexpectedly", origin)
            source.error = _error_line(
                f"{origin}: could not be ingested ({type(exc).__name__}: {exc}); this is a "
                "bug in paper-digest: please report it with the source."
            )
        metrics.count_ingest_source(source)
    return report


def _ingest_source(
    session: Session, source: SourceReport, fmt: str | None, timeout: float,
    allow_private_networks: bool,
) -> None:
    """Read, parse and store one source into its report; errors name the source."""
    data = read_source(source.origin, timeout, allow_private_networks=allow_private_networks)
    try:
        parsed = parse(data, fmt, origin=_short_origin(source.origin))
    except IngestError as exc:
        raise IngestError(f"{source.origin}: {exc}") from None
    _store(session, source, parsed)


def _harvest_source(
    session: Session, source: SourceReport, options: ConnectorOptions, pacer: Pacer
) -> None:
    """Read a connector's source whole, then store it like a file's records."""
    harvested = harvest(source.origin, options, pacer)
    source.skipped, source.skipped_why = harvested.skipped, harvested.skipped_why
    _store(session, source, harvested.result)


def _store(session: Session, source: SourceReport, parsed: ParseResult) -> None:
    """Upsert a source's records and commit them, counting what became of each."""
    source.format, source.records = parsed.format, len(parsed.records)
    source.rejected, source.notes = parsed.rejected, parsed.notes
    counts = upsert_papers(session, parsed.records)
    session.commit()
    source.inserted, source.updated, source.unchanged = (
        counts.inserted, counts.updated, counts.unchanged
    )


def _error_line(message: str) -> str:
    """A source's error as one printable line of sane length."""
    line = " ".join(message.split())
    line = line if line.isprintable() else line.encode("unicode_escape").decode("ascii")
    return line if len(line) <= 500 else line[:497] + "..."


def _short_origin(origin: str) -> str:
    """A file's name (or a URL as given), to keep rejection messages readable."""
    return origin if "://" in origin else Path(origin).name


def load_sample_papers(session: Session) -> IngestReport:
    """Ingest the bundled demo corpus (a real papers page); safe to run again."""
    return ingest(session, [str(SAMPLE_PAPERS)], fmt="page")
