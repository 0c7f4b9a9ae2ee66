"""The evaluation: metrics on hand-made rankings, and `digest eval` on the real labelled set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest.cli import main
from digest.tools.evaluate import (
    DEFAULT_EVAL_DIR,
    DEFAULT_SEEDS_DIR,
    load_corpus,
    load_eval_set,
    ndcg_at_k,
    precision_at_k,
    profile_metrics,
)


def test_ndcg_is_one_for_the_ideal_order_and_discounts_by_log2() -> None:
    assert ndcg_at_k([2, 1, 0], [2, 1, 0]) == pytest.approx(1.0)
    swapped = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert ndcg_at_k([1, 2], [2, 1]) == pytest.approx(swapped)
    assert ndcg_at_k([0, 0], [0, 0]) == 0.0  # nothing relevant to find
    assert ndcg_at_k([], [2]) == 0.0


def test_ndcg_ideal_counts_relevant_papers_the_ranking_missed() -> None:
    assert ndcg_at_k([2], [2, 2]) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_precision_counts_empty_places_as_misses() -> None:
    assert precision_at_k([2, 1, 0, 1], k=10) == pytest.approx(0.3)
    assert precision_at_k([2, 1, 0, 1], k=4, min_grade=2) == pytest.approx(0.25)


def test_unjudged_papers_count_as_not_relevant() -> None:
    m = profile_metrics(["a", "unjudged", "b"], {"a": 2, "b": 1, "c": 0})
    assert m.precision == pytest.approx(0.2) and m.precision_2 == pytest.approx(0.1)


def test_the_labelled_set_joins_the_corpus() -> None:
    eval_set = load_eval_set(DEFAULT_EVAL_DIR)
    corpus, keys = load_corpus(DEFAULT_SEEDS_DIR)
    assert len(corpus) == len(set(keys)) == 445
    judged = {key for grades in eval_set.grades.values() for key in grades}
    assert judged <= set(keys)
    assert len(eval_set.split("dev")) == 13


def test_eval_command_prints_every_method_for_the_dev_split(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": ""}
    result = CliRunner().invoke(main, ["eval"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "split=dev" in result.output and "split=test" not in result.output
    for method in ("tfidf", "bm25", "ours-lexical", "embeddings", "hybrid"):
        assert method in result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()
            if line.split() and line.split()[0] in ("tfidf", "bm25", "ours-lexical")}
    assert float(rows["ours-lexical"][0]) > max(float(rows["tfidf"][0]), float(rows["bm25"][0]))


def test_eval_json_has_the_metrics_per_method(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": ""}
    result = CliRunner().invoke(
        main, ["eval", "--json", "--method", "tfidf", "--method", "bm25"], env=env,
        catch_exceptions=False,
    )
    figures = json.loads(result.output)
    assert set(figures["splits"]["dev"]) == {"tfidf", "bm25"}
    assert 0 < figures["splits"]["dev"]["bm25"]["ndcg@10"] <= 1


def test_eval_says_where_the_seeds_should_be(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["eval", "--seeds", str(tmp_path)],
                                env={"DATA_DIR": str(tmp_path / "data")})
    assert result.exit_code == 1 and "--seeds" in result.output


def test_feedback_on_the_first_digest_improves_the_second(tmp_path: Path) -> None:
    """A reader who rates the first digest gets better new papers in the second one."""
    from digest.score import RankingKnobs
    from digest.tools.evaluate import evaluate_feedback

    corpus, keys = load_corpus()
    result = evaluate_feedback(load_eval_set(), corpus, keys, RankingKnobs(), ["dev"])["dev"]
    assert result["after votes"].ndcg > result["no feedback"].ndcg + 0.05
    assert result["after clicks only"].ndcg > result["no feedback"].ndcg
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": ""}
    output = CliRunner().invoke(main, ["eval", "--method", "bm25"], env=env).output
    assert "Feedback learning" not in output  # only what was asked for
    output = CliRunner().invoke(main, ["eval", "--method", "feedback"], env=env).output
    assert "after votes" in output
