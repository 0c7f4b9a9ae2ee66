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
    Sweep,
    labelled_sets,
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


def test_the_real_inputs_labelled_set_joins_its_corpus() -> None:
    real = labelled_sets()["real"]
    eval_set = load_eval_set(real.eval_dir)
    corpus, keys = load_corpus(real.corpus_dir, real.patterns, real.fmt)
    assert len(corpus) == len(set(keys)) == 253  # two daily-papers items repeat arXiv's
    judged = {key for grades in eval_set.grades.values() for key in grades}
    assert judged <= set(keys)
    assert (len(eval_set.split("dev")), len(eval_set.split("test"))) == (9, 6)
    assert all(any(g == 2 for g in eval_set.grades[p.id].values()) for p in eval_set.profiles)


def _rows(output: str, set_name: str) -> dict[str, list[str]]:
    """The method rows of one set's table in `digest eval`'s output."""
    block = output.split(f"set={set_name}:")[1].split("\n\n")[0]
    return {line.split()[0]: line.split()[1:] for line in block.splitlines()[2:]
            if line.split() and not line.startswith("  (")}


def test_eval_command_prints_both_sets_every_method_and_the_defaults(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": ""}
    result = CliRunner().invoke(main, ["eval", "--split", "dev"], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "dev nDCG@10" in result.output and "test nDCG@10" not in result.output
    for method in ("tfidf", "bm25", "svm", "ours-lexical", "embeddings", "bm25+embeddings",
                   "hybrid"):
        assert method in result.output
    for set_name in ("seeds", "real"):
        rows = _rows(result.output, set_name)
        assert float(rows["ours-lexical"][0]) > float(rows["tfidf"][0])
    seeds = _rows(result.output, "seeds")
    assert float(seeds["ours-lexical"][0]) > max(float(seeds["bm25"][0]),
                                                 float(seeds["svm"][0]))
    assert "chosen on real/dev" in result.output and "MMR_LAMBDA=" in result.output


def test_eval_json_has_the_metrics_per_set_split_and_method(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": ""}
    result = CliRunner().invoke(
        main, ["eval", "--json", "--method", "tfidf", "--method", "bm25"], env=env,
        catch_exceptions=False,
    )
    figures = json.loads(result.output)
    assert set(figures["sets"]) == {"seeds", "real"} and figures["chosen_on"] == "real/dev"
    for split in ("dev", "test"):
        assert set(figures["sets"]["real"]["splits"][split]) == {"tfidf", "bm25"}
    assert 0 < figures["sets"]["seeds"]["splits"]["dev"]["bm25"]["ndcg@10"] <= 1


def test_a_sweep_chooses_the_best_on_the_selection_split_with_the_knobs_tie_rule() -> None:
    rows = {value: {"real/dev": ndcg, "real/test": 1.0 - ndcg}
            for value, ndcg in [(0.0, 0.70), (0.3, 0.75), (0.5, 0.75), (0.7, 0.74)]}
    assert Sweep("semantic_weight", 0.3, rows).best_on_selection() == 0.3  # the smaller
    assert Sweep("relative_relevance", 0.3, rows).best_on_selection() == 0.5  # the larger cut


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
    output = CliRunner().invoke(main, ["eval", "--set", "seeds", "--method", "bm25"],
                                env=env).output
    assert "Feedback learning" not in output  # only what was asked for
    output = CliRunner().invoke(main, ["eval", "--set", "seeds", "--method", "feedback"],
                                env=env).output
    assert "after votes" in output
