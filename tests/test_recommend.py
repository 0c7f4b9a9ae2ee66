"""Ad-hoc recommendations: `digest recommend` over the papers in the database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from digest.cli import main


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": "", "SEMANTIC_WEIGHT": "0"}

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    assert invoke("ingest", "--sample").exit_code == 0
    return invoke


def test_recommend_json_lists_title_score_and_why(cli) -> None:
    result = cli("recommend", "--topics", "LoRA, low-rank adaptation", "--limit", "3", "--json")
    assert result.exit_code == 0, result.output
    papers = json.loads(result.output)
    assert 1 <= len(papers) <= 3
    assert all({"title", "score", "why", "url", "paper_id"} <= set(p) for p in papers)
    assert papers[0]["why"].startswith("matches: ")
    assert [p["score"] for p in papers] == sorted((p["score"] for p in papers), reverse=True)


def test_recommend_ranks_the_whole_archive_on_a_day_without_new_papers(cli) -> None:
    later = cli("recommend", "--topics", "diffusion models", "--date", "2099-01-01", "--json")
    assert later.exit_code == 0 and json.loads(later.output)


def test_recommend_says_so_when_nothing_matches(cli) -> None:
    result = cli("recommend", "--topics", "sourdough baking")
    assert result.exit_code == 0 and "No paper matches" in result.output
