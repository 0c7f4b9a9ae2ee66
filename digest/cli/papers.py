"""Commands about papers and their ranking: `papers`, `recommend`, and the developer tools
`eval` and `bench` (digest.tools, imported only inside the commands that run them)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

import click

from .. import db
from .base import DAY, main, needs_database, settings_of, today

MAX_LISTED = 100_000


EVAL_METHODS = ("tfidf", "bm25", "svm", "ours-lexical", "embeddings", "bm25+embeddings",
                "hybrid", "feedback")


def _topics(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Topics checked as every door checks them: at least one word, bounded in length."""
    from ..subscribers import SubscriberError, clean_topics

    try:
        topics = clean_topics(value)
    except SubscriberError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not topics:
        raise click.BadParameter("Give at least one topic, e.g. 'LoRA, activation sparsity'.")
    return topics


@main.group("papers")
def papers_group() -> None:
    """Inspect the papers in the database."""


@papers_group.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, MAX_LISTED),
              help="How many, newest first.")
@click.option("--search", default=None, help="Only titles containing this text.")
@click.pass_context
@needs_database
def papers_list(ctx: click.Context, limit: int, search: str | None) -> None:
    """List papers, most recently seen first.

    Example: digest papers list --search LoRA
    """
    from ..lookups import list_papers

    with db.session_scope(settings_of(ctx)) as session:
        page = list_papers(session, limit, search)
        for p in page.papers:
            votes = f"{p.upvotes:>4}▲" if p.upvotes is not None else "     "
            click.echo(f"{p.id:>6}  {p.source_id:<24} {votes}  {p.title[:70]}")
        click.echo(f"{len(page.papers)} shown of {page.total} paper(s).")


@papers_group.command("show")
@click.argument("paper")
@click.pass_context
@needs_database
def papers_show(ctx: click.Context, paper: str) -> None:
    """Show one paper by database id or source id (e.g. an arXiv id).

    Example: digest papers show 2607.07673
    """
    from ..cards import keywords
    from ..lookups import find_paper

    with db.session_scope(settings_of(ctx)) as session:
        found = find_paper(session, paper)
        if found is None:
            raise click.ClickException(f"No paper with id or source id {paper!r}.")
        click.echo(f"Title:     {found.title}")
        click.echo(f"Authors:   {', '.join(found.authors) or '-'}")
        click.echo(f"Organization: {found.organization or '-'}")
        click.echo(f"Source:    {found.source} {found.source_id}")
        click.echo(f"Page:      {found.url or '-'}")
        click.echo(f"PDF:       {found.pdf_url or '-'}")
        click.echo(f"Code:      {found.github_repo or '-'}")
        click.echo(f"Published: {found.published_at or '-'}")
        # The day its source listed it, from which it counts as new (else from first seen).
        listed = f"{found.listed_at:%Y-%m-%d %H:%M} UTC" if found.listed_at else "-"
        click.echo(f"Listed:    {listed}")
        click.echo(f"First seen: {found.first_seen_at:%Y-%m-%d %H:%M} UTC")
        engagement = [
            f"{n} {label}" for n, label in
            ((found.upvotes, "upvotes"), (found.comments, "comments"), (found.stars, "stars"))
            if n is not None
        ]
        click.echo(f"Engagement: {', '.join(engagement) or '-'}")
        click.echo(f"Keywords:  {', '.join(keywords(found.ai_keywords)) or '-'}")
        click.echo(f"TL;DR:     {found.ai_summary or '-'}")
        click.echo("")
        click.echo(found.abstract)


@main.command()
@click.option("--subscribers", "-n", default=10_000, show_default=True,
              type=click.IntRange(1, 10_000_000), help="Subscribers.")
@click.option("--papers", "-m", default=2_000, show_default=True,
              type=click.IntRange(1, 1_000_000), help="New papers that day.")
@click.option("--workers", "-k", default=0, show_default=True, type=click.IntRange(0, 64),
              help="Also run the day on K Celery workers (needs Redis and PostgreSQL).")
@click.option("--concurrency", "-c", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes per Celery worker (its prefork pool).")
@click.option("--backend", type=click.Choice(["smtp", "file"]), default="smtp",
              show_default=True, help="In-process mail backend: an SMTP sink or the file outbox.")
@click.option("--batch-size", default=None, type=click.IntRange(1, 100_000),
              help="Subscribers per batch.")
@click.option("--jobs", "-j", default=None, type=click.IntRange(0, 256),
              help="Processes for the in-process day (RUN_JOBS; 0: one per core).")
@click.option("--in-process/--no-in-process", default=True, show_default=True,
              help="Run the day in this process too (off: only on the --workers).")
@click.option("--repeat", "--runs", "runs", default=1, show_default=True,
              type=click.IntRange(1, 100),
              help="Run the whole bench N times in a row; print each run and the spread "
                   "(min/median/max) of the whole day and of the workers' ratio.")
@click.option("--plan-only", is_flag=True,
              help="Only plan the day in PostgreSQL and enqueue its batches to Redis, as the "
                   "beat's tick does (no sending, no workers): time, memory, statements.")
@click.option("--sink-count", default=None, type=click.IntRange(1, 10_000_000),
              help="Feed the SMTP sink alone at most N digests for the workers' ratio (its "
                   "rate over N stands for the day's; default: as many as the day, which at "
                   "1,000,000 takes as long as the day again).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def bench(ctx: click.Context, subscribers: int, papers: int, workers: int, concurrency: int,
          backend: str, batch_size: int | None, jobs: int | None, in_process: bool, runs: int,
          plan_only: bool, sink_count: int | None, as_json: bool) -> None:
    """Run a synthetic day and print time, rate and ratio to the best case per stage.

    Uses a throwaway SQLite file (and a throwaway PostgreSQL database with --workers);
    your data is not touched.

    Example: digest bench --subscribers 10000 --papers 2000 --workers 2
    """
    from ..tools.bench import figures_json, repeat_bench, runs_json, spread_table

    settings = settings_of(ctx)
    if batch_size:
        settings = replace(settings, batch_size=batch_size)
    if jobs is not None:
        settings = replace(settings, run_jobs=jobs)
    if not in_process and not workers and not plan_only:
        raise click.UsageError("--no-in-process needs --workers K: there would be nothing to run.")
    every = repeat_bench(settings, runs, subscribers, papers, workers, backend,
                         in_process=in_process, progress=lambda line: click.echo(line, err=True),
                         concurrency=concurrency, plan_only=plan_only, sink_count=sink_count)
    if as_json:
        click.echo(figures_json(every[0]) if runs == 1 else runs_json(every))
        return
    for k, figures in enumerate(every, start=1):
        if runs > 1:
            click.echo(f"\nRun {k} of {runs}")
        click.echo(figures.table())
    if runs > 1:
        click.echo("\n" + spread_table(every))


@main.command()
@click.option("--topics", required=True, help="Comma-separated topics, e.g. 'LoRA, RLHF'.",
              callback=_topics)
@click.option("--limit", "-n", default=10, show_default=True, type=click.IntRange(1, 100),
              help="How many papers.")
@click.option("--date", "day", type=DAY, metavar="YYYY-MM-DD",
              help="Rank that day's candidates.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {title, score, why}.")
@click.pass_context
@needs_database
def recommend(ctx: click.Context, topics: str, limit: int, day: date | None,
              as_json: bool) -> None:
    """Rank the papers in the database for ad-hoc topics, as a digest would.

    Ranks the day's candidate papers, or every paper when the day has none.

    Example: digest recommend --topics "LoRA, activation sparsity" --limit 5 --json
    """
    import json

    from ..recommend import recommend as recommend_papers

    settings = settings_of(ctx)
    papers = recommend_papers(settings, topics, limit, day or today(), max_limit=100)
    if as_json:
        click.echo(json.dumps(papers, indent=2, ensure_ascii=False))
        return
    if not papers:
        click.echo("No paper matches these topics. Ingest some papers or try other words.")
    for rank, paper in enumerate(papers, 1):
        click.echo(f"{rank:>2}. {paper['score']:.3f}  {paper['title']}")
        click.echo(f"    {paper['why']}" + (f"  {paper['url']}" if paper["url"] else ""))


@main.command("eval")
@click.option("--set", "set_name", type=click.Choice(["seeds", "real", "all"]), default="all",
              show_default=True, help="Which labelled set: the seed pages' or the real inputs'.")
@click.option("--eval-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The seeds' labelled set (profiles.json, judgments.jsonl); default: eval/.")
@click.option("--seeds", "seeds_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Seed pages (*.txt); default: the repo's inputs/seeds.")
@click.option("--real-eval-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The real inputs' labelled set; default: eval/real/.")
@click.option("--real-inputs", "real_inputs_dir", default=None,
              type=click.Path(file_okay=False, path_type=Path),
              help="Recorded arXiv (*.xml) and daily-papers (*.json) responses; default: "
                   "inputs/real-inputs.")
@click.option("--split", type=click.Choice(["dev", "test", "all"]), default="all",
              show_default=True, help="Profiles to score; test is held out: never tune on it.")
@click.option("--method", "methods", multiple=True, type=click.Choice(EVAL_METHODS),
              help="Only these methods (repeatable).")
@click.option("--sweep", is_flag=True,
              help="Also try each measured ranking default at other values (slower).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def eval_command(ctx: click.Context, set_name: str, eval_dir: Path | None,
                 seeds_dir: Path | None, real_eval_dir: Path | None,
                 real_inputs_dir: Path | None, split: str, methods: tuple[str, ...],
                 sweep: bool, as_json: bool) -> None:
    """Print nDCG@10 and P@10 of each ranking method on both labelled sets, side by side.

    Example: digest eval --set real --split dev
    """
    from ..tools import evaluate

    sets = evaluate.labelled_sets(
        eval_dir or evaluate.DEFAULT_EVAL_DIR, seeds_dir or evaluate.DEFAULT_SEEDS_DIR,
        real_eval_dir or evaluate.DEFAULT_REAL_EVAL_DIR,
        real_inputs_dir or evaluate.DEFAULT_REAL_INPUTS_DIR,
    )
    if set_name != "all":
        sets = {set_name: sets[set_name]}
    try:
        report = evaluate.run_eval(settings_of(ctx), sets, split, methods, sweep)
    except OSError as exc:  # a missing directory or file says which, and what to pass
        raise click.ClickException(str(exc)) from exc
    except (ValueError, KeyError) as exc:  # JSON that does not parse, a field missing
        where = " or ".join(str(s.eval_dir) for s in sets.values())
        raise click.ClickException(
            f"The labelled set in {where} is malformed "
            f"({type(exc).__name__}: {exc}): profiles.json is a list of {{id, topics, split}}, "
            "judgments.jsonl one {profile, paper, grade} per line."
        ) from exc
    click.echo(report.as_json() if as_json else report.table())
