"""Feedback learning, on SQLite and PostgreSQL: a reader follows the links of a real digest
(received over SMTP, clicked through the Flask app), and their next digest has learned from it;
`digest subscribers show` says what it learned. Bad links record nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from digest import db, feedback
from digest.cli import main
from digest.models import FeedbackKind, Paper, PaperFeedback
from digest.pipeline import run_day
from digest.settings import Settings
from digest.tokens import Purpose, make_token
from digest.web import create_app

from .conftest import lexical_only
from .factories import make_paper, make_subscriber
from .smtp_server import SMTPServer

DAY = date(2026, 11, 23)
MORNING = datetime(2026, 11, 23, 6, tzinfo=timezone.utc)


@pytest.fixture
def fb_settings(settings: Settings, smtp_server: SMTPServer, redis_url: str) -> Settings:
    return replace(lexical_only(settings), mail_backend="smtp", smtp_host="127.0.0.1",
                   smtp_port=smtp_server.port, redis_url=redis_url, min_relevance=0.05,
                   public_base_url="https://digest.test")


@pytest.fixture
def client(fb_settings: Settings) -> Iterator[FlaskClient]:
    with create_app(fb_settings).test_client() as c:
        yield c


def paper(session: Session, title: str, abstract: str, day: int, upvotes: int = 10) -> int:
    seen = MORNING + timedelta(days=day)
    return make_paper(session, title=title, abstract=abstract, upvotes=upvotes,
                      first_seen_at=seen, published_at=seen).id


def first_day(session: Session) -> dict[str, int]:
    """Three LoRA papers: one on language models, one quantized, one for image diffusion."""
    ids = {
        "plain": paper(session, "LoRA: Low-Rank Adaptation of Large Language Models",
                       "LoRA trains rank-decomposition matrices to fine-tune language models.", 0),
        "quantized": paper(session, "QLoRA: Efficient Finetuning of Quantized LLMs",
                           "LoRA adapters on a frozen 4-bit quantized model; quantization "
                           "constants are themselves quantized.", 0),
        "diffusion": paper(session, "LoRA for Stable Diffusion Image Generation",
                           "LoRA fine-tuning of text-to-image diffusion models for image "
                           "generation in new styles.", 0),
    }
    for title in FILLER:  # other fields, so that "LoRA" is a telling word in this small corpus
        paper(session, title, f"{title} on standard benchmarks.", 0)
    session.commit()
    return ids


FILLER = ("Reward Models for RLHF", "Graph Neural Networks for Molecules",
          "Speech Recognition with Conformers", "Protein Structure Prediction",
          "Object Detection in Crowded Scenes", "Time Series Forecasting with Transformers")


def second_day(session: Session) -> dict[str, int]:
    """A popular diffusion LoRA paper and a quieter quantization one."""
    ids = {
        "diffusion": paper(session, "Style LoRA for Text-to-Image Diffusion",
                           "LoRA adapters steer text-to-image diffusion models toward an image "
                           "style; diffusion image generation with few images.", 1, upvotes=300),
        "quantized": paper(session, "2-bit Quantized LoRA Adapters",
                           "LoRA adapters for 2-bit quantized language models; quantization "
                           "error is absorbed by the low-rank update.", 1, upvotes=5),
    }
    session.commit()
    return ids


def html_part(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def feedback_links(message: EmailMessage) -> dict[str, list[str]]:
    """The digest's feedback links by what they do: open, pdf, more, less."""
    found: dict[str, list[str]] = {}
    for href in re.findall(r'href="(https://digest\.test/feedback/[^"]+)"', html_part(message)):
        found.setdefault(href.rsplit("/", 1)[1], []).append(href.replace("https://digest.test", ""))
    return found


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match
    return match.group(1)


def vote(client: FlaskClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200
    done = client.post(path, data={"csrf_token": csrf_of(page.get_data(as_text=True))})
    assert done.status_code == 200
    return done.get_data(as_text=True)


def rows(settings: Settings) -> list[tuple[int, int, FeedbackKind]]:
    with db.session_scope(settings) as s:
        return [tuple(r) for r in s.execute(  # type: ignore[misc]
            select(PaperFeedback.subscriber_id, PaperFeedback.paper_id, PaperFeedback.kind)
            .order_by(PaperFeedback.id))]


def titles_in_order(message: EmailMessage) -> list[str]:
    text = str(message.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    return [t.strip() for t in re.findall(r"^\d+\. (.+)$", text, flags=re.M)]


def test_the_next_digest_learns_from_more_and_less_like_this(
    session: Session, fb_settings: Settings, smtp_server: SMTPServer, client: FlaskClient
) -> None:
    first = first_day(session)
    ada = make_subscriber(session, email="ada@example.org", topics="LoRA", papers_per_digest=3)
    ada.click_tracking = True  # her paper links go through the click-recording redirect
    make_subscriber(session, email="grace@example.org", topics="LoRA", papers_per_digest=3)
    session.commit()
    assert len(run_day(fb_settings, DAY).sent) == 2
    [digest] = smtp_server.by_recipient()["ada@example.org"]
    links = feedback_links(digest)
    assert len(links["open"]) == 2 * 3 and len(links["more"]) == len(links["less"]) == 3

    # Following a paper link records a click and lands on the paper itself.
    opened = client.get(links["open"][0])
    assert opened.status_code == 302 and opened.location.startswith("https://arxiv.org/abs/")
    # "less like this" on the diffusion paper, "more like this" on the quantized one.
    by_paper = {int(p.split("/")[-2]): p for p in links["less"] + links["more"]}
    page = vote(client, by_paper[first["diffusion"]].rsplit("/", 1)[0] + "/less")
    assert "Thanks: fewer papers like this" in page and "LoRA for Stable Diffusion" in page
    vote(client, by_paper[first["quantized"]].rsplit("/", 1)[0] + "/more")
    kinds = {(p, k) for s, p, k in rows(fb_settings) if s == ada.id}
    assert (first["diffusion"], FeedbackKind.LESS) in kinds
    assert (first["quantized"], FeedbackKind.MORE) in kinds

    second_day(session)
    run_day(fb_settings, DAY + timedelta(days=1))
    inbox = smtp_server.by_recipient()
    grace_titles = titles_in_order(inbox["grace@example.org"][1])
    ada_digest = inbox["ada@example.org"][1]
    ada_titles = titles_in_order(ada_digest)
    # Without feedback the popular diffusion paper leads; Ada's profile moved away from it.
    assert grace_titles[0] == "Style LoRA for Text-to-Image Diffusion"
    assert ada_titles[0] == "2-bit Quantized LoRA Adapters"
    assert "which you liked" in str(ada_digest.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    with db.session_scope(fb_settings) as s:
        learned = feedback.learned_profile(s, s.get(type(ada), ada.id))  # type: ignore[arg-type]
    assert learned.more == ("QLoRA: Efficient Finetuning of Quantized LLMs",)
    assert learned.less == ("LoRA for Stable Diffusion Image Generation",)
    assert any("quantiz" in term for term in learned.toward)
    assert any("diffusion" in term or "image" in term for term in learned.away)


def test_subscribers_show_lists_what_the_profile_learned(
    tmp_path, sqlite_settings: Settings  # type: ignore[no-untyped-def]
) -> None:
    with db.session_scope(sqlite_settings) as s:
        ids = first_day(s)
        sub = make_subscriber(s, email="ada@example.org", topics="LoRA", papers_per_digest=3)
        sid = sub.id
    run_day(replace(sqlite_settings, mail_backend="file"), DAY)
    now = datetime.now(timezone.utc)
    with db.session_scope(sqlite_settings) as s:
        feedback.record(s, sid, ids["quantized"], FeedbackKind.MORE, now)
        feedback.record(s, sid, ids["diffusion"], FeedbackKind.LESS, now)
        feedback.record(s, sid, ids["plain"], FeedbackKind.CLICK, now)
    env = {"DATABASE_URL": sqlite_settings.database_url, "DATA_DIR": str(sqlite_settings.data_dir),
           "SECRET_KEY": sqlite_settings.secret_key or "x"}
    result = CliRunner().invoke(main, ["subscribers", "show", "ada@example.org"], env=env)
    assert result.exit_code == 0, result.output
    out = result.output
    assert 'Learned:      from 1 "more like this", 1 "less like this", 1 click' in out
    assert "more like  QLoRA: Efficient Finetuning of Quantized LLMs" in out
    assert "less like  LoRA for Stable Diffusion Image Generation" in out
    assert "clicked    LoRA: Low-Rank Adaptation" in out
    assert "leans toward:" in out and "leans away from:" in out


def test_votes_replace_each_other_and_clicks_count_once(
    session: Session, fb_settings: Settings
) -> None:
    ids = first_day(session)
    sub = make_subscriber(session, topics="LoRA", papers_per_digest=3)
    session.commit()
    run_day(replace(fb_settings, mail_backend="file"), DAY)
    now = datetime.now(timezone.utc)
    with db.session_scope(fb_settings) as s:
        for _ in range(3):
            feedback.record(s, sub.id, ids["plain"], FeedbackKind.CLICK, now)
        feedback.record(s, sub.id, ids["quantized"], FeedbackKind.MORE, now)
        feedback.record(s, sub.id, ids["quantized"], FeedbackKind.LESS, now + timedelta(1))
        feedback.record(s, sub.id, ids["quantized"], FeedbackKind.LESS, now + timedelta(2))
    assert sorted((p, k.value) for _, p, k in rows(fb_settings)) == sorted(
        [(ids["plain"], "click"), (ids["quantized"], "less")])
    with db.session_scope(fb_settings) as s:
        signals = feedback.signals_for(s, [sub.id])[sub.id]
    assert {(x.paper_id, x.weight) for x in signals} == {
        (ids["plain"], 0.5), (ids["quantized"], -1.0)}


def test_a_link_scanners_burst_of_clicks_teaches_nothing() -> None:
    start = datetime(2026, 11, 23, 7, tzinfo=timezone.utc)
    burst = [feedback.FeedbackRow(i, FeedbackKind.CLICK, start + timedelta(seconds=i), f"T{i}", "")
             for i in range(1, 6)]
    reader = [feedback.FeedbackRow(9, FeedbackKind.CLICK, start + timedelta(hours=2), "T9", ""),
              feedback.FeedbackRow(3, FeedbackKind.MORE, start + timedelta(hours=3), "T3", "")]
    signals = feedback.learning_signals(burst + reader)
    # The scanner opened five links in five seconds; the reader's own click and vote remain.
    assert {(s.paper_id, s.weight) for s in signals} == {(9, 0.5), (3, 1.0)}
    assert len(feedback.scanner_clicks(burst + reader)) == 5


def test_bad_feedback_links_record_nothing(
    session: Session, fb_settings: Settings, client: FlaskClient
) -> None:
    ids = first_day(session)
    sub = make_subscriber(session, topics="LoRA", papers_per_digest=3)
    sub.click_tracking = True  # clicks count only for a reader who chose it
    never_sent = paper(session, "Sourdough Baking at Scale", "Bread.", 0)
    session.commit()
    run_day(replace(fb_settings, mail_backend="file"), DAY)
    token = make_token(fb_settings, Purpose.FEEDBACK, sub)
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    other_purpose = make_token(fb_settings, Purpose.UNSUBSCRIBE, sub)

    # A forged link still leads to the paper (it is our own URL), but records nothing.
    response = client.get(f"/feedback/{forged}/{ids['plain']}/open")
    assert response.status_code == 302 and response.location.startswith("https://arxiv.org/")
    assert client.get(f"/feedback/{other_purpose}/{ids['plain']}/pdf").status_code == 302
    # A paper never sent to this reader, a HEAD request (a prefetch): no click either.
    assert client.get(f"/feedback/{token}/{never_sent}/open").status_code == 302
    assert client.head(f"/feedback/{token}/{ids['plain']}/open").status_code == 302
    assert rows(fb_settings) == []
    # The PDF link goes to the PDF; an unknown paper is a friendly 404.
    pdf = client.get(f"/feedback/{token}/{ids['plain']}/pdf")
    assert pdf.location.startswith("https://arxiv.org/pdf/")
    assert client.get(f"/feedback/{token}/999999/open").status_code == 404
    assert rows(fb_settings) == [(sub.id, ids["plain"], FeedbackKind.CLICK)]

    # Votes: a GET only shows the button; forged tokens, foreign papers and missing CSRF fail.
    page = client.get(f"/feedback/{token}/{ids['quantized']}/more")
    assert page.status_code == 200 and "More papers like this?" in page.get_data(as_text=True)
    assert client.get(f"/feedback/{forged}/{ids['quantized']}/more").status_code == 400
    assert client.get(f"/feedback/{token}/{never_sent}/less").status_code == 404
    assert client.post(f"/feedback/{token}/{ids['quantized']}/more").status_code == 400
    assert client.get(f"/feedback/{token}/{ids['quantized']}/sideways").status_code == 404
    csrf = csrf_of(page.get_data(as_text=True))
    assert client.post(f"/feedback/{forged}/{ids['quantized']}/more",
                       data={"csrf_token": csrf}).status_code == 400
    assert client.post(f"/feedback/{token}/{never_sent}/more",
                       data={"csrf_token": csrf}).status_code == 404
    assert len(rows(fb_settings)) == 1


def test_a_hostile_title_is_escaped_on_the_vote_page(
    session: Session, fb_settings: Settings, client: FlaskClient
) -> None:
    hostile = paper(session, 'LoRA <script>alert("x")</script> tricks',
                    "LoRA low-rank adaptation.", 0)
    sub = make_subscriber(session, topics="LoRA", papers_per_digest=3)
    session.commit()
    run_day(replace(fb_settings, mail_backend="file"), DAY)
    token = make_token(fb_settings, Purpose.FEEDBACK, sub)
    page = client.get(f"/feedback/{token}/{hostile}/less").get_data(as_text=True)
    assert "<script>alert" not in page and "&lt;script&gt;" in page


def test_changing_topics_starts_the_learning_afresh(
    session: Session, fb_settings: Settings
) -> None:
    from digest.subscribers import set_topics

    ids = first_day(session)
    sub = make_subscriber(session, email="ada@example.org", topics="LoRA", papers_per_digest=3)
    session.commit()
    run_day(replace(fb_settings, mail_backend="file"), DAY)
    with db.session_scope(fb_settings) as s:
        feedback.record(s, sub.id, ids["quantized"], FeedbackKind.MORE, datetime.now(timezone.utc))
    with db.session_scope(fb_settings) as s:
        assert len(feedback.signals_for(s, [sub.id])[sub.id]) == 1
        set_topics(s, "ada@example.org", "diffusion models")
    with db.session_scope(fb_settings) as s:
        assert feedback.signals_for(s, [sub.id]) == {}
        assert feedback.learned_profile(s, s.get(type(sub), sub.id)).empty  # type: ignore[arg-type]


def test_a_liked_paper_from_before_the_day_teaches_its_keywords_as_a_days_paper_does(
    session: Session, settings: Settings
) -> None:
    """Only its keywords tie the liked paper to mixture-of-experts papers: it must pull the
    reader toward them whether it is among the day's papers or older (read from the archive
    by `signals_for`)."""
    from digest.cards import candidate_paper
    from digest.score import CandidatePaper, Profile, RankingKnobs, build_day_index

    liked = make_paper(session, title="Scaling sparse models", abstract="We scale models.",
                       first_seen_at=MORNING - timedelta(days=30))
    liked.ai_keywords = ["mixture of experts", "expert routing"]
    experts = paper(session, "Music generation with a mixture of experts",
                    "Music generation where a mixture of experts routes each bar.", 0,
                    upvotes=5)
    dense = paper(session, "Music generation with dense transformers",
                  "Music generation with dense transformers on long audio.", 0, upvotes=300)
    for title in FILLER:
        paper(session, title, f"{title} on standard benchmarks.", 0)
    ada = make_subscriber(session, email="ada@example.org", topics="music generation")
    ada.profile.updated_at = MORNING - timedelta(days=40)
    session.add(PaperFeedback(subscriber_id=ada.id, paper_id=liked.id, kind=FeedbackKind.MORE,
                              created_at=MORNING - timedelta(days=20)))
    session.commit()

    [signal] = feedback.signals_for(session, [ada.id])[ada.id]
    assert signal.text == candidate_paper(liked).text  # the text a day's paper is read by
    day = [candidate_paper(p) for p in session.scalars(
        select(Paper).where(Paper.first_seen_at >= MORNING).order_by(Paper.id))]
    knobs = RankingKnobs.from_settings(lexical_only(settings))

    def picks(papers: list[CandidatePaper], learned: bool) -> list[int]:
        index = build_day_index(papers, [], MORNING, knobs)
        profile = Profile(ada.id, "music generation", limit=2,
                          sent_paper_ids=frozenset({liked.id}),
                          feedback=(signal,) if learned else ())
        [selection] = index.select([profile])
        return [pick.paper_id for pick in selection.picks]

    assert picks(day, learned=False) == [dense, experts]  # the popular one leads unlearned
    assert picks(day, learned=True) == [experts, dense]  # liked paper older than the day
    assert picks([*day, candidate_paper(liked)], learned=True) == [experts, dense]  # a day's
