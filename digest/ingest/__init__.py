"""Ingest: turn papers-listing pages, daily-papers JSON and arXiv Atom feeds into `Paper` rows.

Everything downstream (scoring, rendering, sending) trusts the `papers` table, so this is the one
place that reads the outside world's formats, with all their quirks, and decides what a paper is.
The story is top-down: read a source (a local file, or an http(s) URL fetched by `fetch` with a
total deadline, a size cap and public addresses only) → detect its format → parse it into plain
`PaperRecord`s, each validated into range (a bad record is rejected with its reason, an overlong
field is cut and the cut reported, a document that cannot be read is refused whole) → upsert
them, so that running the same ingest twice changes nothing and one paper seen on a page, on the
daily-papers site and on arXiv ends up as one row. One source's failure never stops the others.

Text is stored as text: escaping is the renderer's job. Here we only remove control and format
characters (bidi overrides among them) and tidy whitespace.

The package follows that story: `sources` (read), `connectors` (the sources a daily service
reads by name: arXiv's listing and API, the daily-papers API by date, RSS/Atom feeds), `formats`
(detect and parse, over one module per format: `page`, `daily_papers`, `arxiv`, `feeds`),
`records` (the record, its checks and limits), `upsert` (store) and `job` (`ingest`, the whole
job, and its reports). What the rest
of the code uses is importable from `digest.ingest`.
"""

from .connectors import ConnectorOptions, source_list
from .formats import FORMATS, detect_format, parse
from .job import SAMPLE_PAPERS, IngestReport, SourceReport, ingest, load_sample_papers
from .records import IngestError, Note, PaperRecord, ParseResult, Rejection, title_key
from .sources import read_source
from .upsert import UpsertCounts, upsert_papers

__all__ = [
    "FORMATS",
    "SAMPLE_PAPERS",
    "ConnectorOptions",
    "IngestError",
    "IngestReport",
    "Note",
    "PaperRecord",
    "ParseResult",
    "Rejection",
    "SourceReport",
    "UpsertCounts",
    "detect_format",
    "ingest",
    "load_sample_papers",
    "parse",
    "read_source",
    "source_list",
    "title_key",
    "upsert_papers",
]
