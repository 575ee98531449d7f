"""The promotion statistics on constructed per-sample results (no MLflow)."""

from __future__ import annotations

import random

import pytest

from w4s.errors import ConfigError
from w4s.tracking.stats import (
    METHOD,
    METHOD_STRATIFIED,
    TAG_PREFIX,
    PairedComparison,
    compare_meta_agents,
    compare_paired,
    decide,
    sample_ids_sha256,
)


def paired(n: int, wins: int, losses: int, both: int) -> tuple[dict[str, float], dict[str, float]]:
    """0/1 scores on ``n`` samples: the challenger alone right on ``wins``, the champion alone on
    ``losses``, both right on ``both``, neither on the rest; ids in a scrambled order."""
    kinds = ["win"] * wins + ["loss"] * losses + ["both"] * both + ["none"] * (n - wins - losses - both)
    random.Random(n * 7919 + wins).shuffle(kinds)
    challenger, champion = {}, {}
    for i, kind in enumerate(kinds):
        sample_id = f"s{i:04d}"
        challenger[sample_id] = 1.0 if kind in ("win", "both") else 0.0
        champion[sample_id] = 1.0 if kind in ("loss", "both") else 0.0
    return challenger, champion


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_clear_win_is_promoted():
    challenger, champion = paired(200, wins=30, losses=5, both=120)
    result = compare_paired(challenger, champion)
    assert result.n == 200
    assert result.challenger_mean == pytest.approx(150 / 200)
    assert result.champion_mean == pytest.approx(125 / 200)
    assert result.gain == pytest.approx(25 / 200)
    assert 0 < result.lower < result.gain < result.upper
    assert result.method == METHOD
    assert decide(result, 0.0)


def test_an_exact_tie_is_not_promoted():
    challenger, champion = paired(200, wins=0, losses=0, both=140)
    result = compare_paired(challenger, champion)
    assert result.gain == 0.0
    assert (result.lower, result.upper) == (0.0, 0.0)
    assert not decide(result, 0.0)
    assert not decide(result, 0.02)


def test_a_tie_with_disagreements_is_not_promoted():
    challenger, champion = paired(200, wins=12, losses=12, both=120)
    result = compare_paired(challenger, champion)
    assert result.gain == 0.0
    assert result.lower < 0 < result.upper
    assert not decide(result, 0.0)


@pytest.mark.parametrize(("wins", "losses"), [(1, 0), (2, 0), (3, 1), (11, 9), (14, 12)])
def test_a_noise_level_gain_is_not_promoted(wins, losses):
    challenger, champion = paired(200, wins=wins, losses=losses, both=130)
    result = compare_paired(challenger, champion)
    assert result.gain > 0
    assert result.lower <= 0
    assert not decide(result, 0.0)


def test_a_regression_is_not_promoted():
    challenger, champion = paired(200, wins=5, losses=25, both=110)
    result = compare_paired(challenger, champion)
    assert result.gain == pytest.approx(-20 / 200)
    assert result.lower < result.upper < 0
    assert not decide(result, 0.0)
    assert not decide(result, -0.05)


def test_the_margin_is_a_gain_the_lower_bound_must_exceed():
    challenger, champion = paired(400, wins=60, losses=10, both=250)
    result = compare_paired(challenger, champion)
    assert result.gain == pytest.approx(0.125)
    assert decide(result, 0.0)
    assert decide(result, result.lower - 1e-9)
    assert not decide(result, result.lower)  # strictly greater
    assert not decide(result, 0.1)
    assert not decide(result, result.gain)  # the point estimate alone is not enough
    # A negative margin tolerates a regression of at most that size (e.g. for a cheaper workflow).
    slightly_worse = compare_paired(*paired(400, wins=20, losses=24, both=250))
    assert slightly_worse.gain < 0
    assert not decide(slightly_worse, 0.0)
    assert decide(slightly_worse, -0.05)


@pytest.mark.parametrize("margin", [float("nan"), float("inf"), 1.0, -1.5, "0.1"])
def test_a_bad_margin_is_refused(margin):
    result = compare_paired(*paired(100, wins=20, losses=2, both=50))
    with pytest.raises(ConfigError) as error:
        decide(result, margin)
    assert "margin" in one_line(error)


def test_the_same_seed_gives_the_same_interval_and_another_seed_a_close_one():
    challenger, champion = paired(300, wins=25, losses=12, both=180)
    first = compare_paired(challenger, champion, seed=7)
    assert compare_paired(challenger, champion, seed=7) == first
    # Insertion order of the mappings does not matter either.
    reordered = compare_paired(dict(reversed(challenger.items())), dict(sorted(champion.items())), seed=7)
    assert reordered == first
    other = compare_paired(challenger, champion, seed=8)
    assert other.seed == 8
    assert other.gain == first.gain
    assert other.lower == pytest.approx(first.lower, abs=0.01)
    assert other.upper == pytest.approx(first.upper, abs=0.01)


def test_fractional_scores():
    rng = random.Random(3)
    champion = {f"q{i}": rng.random() for i in range(300)}
    challenger = {k: min(1.0, v + 0.1 * rng.random()) for k, v in champion.items()}
    result = compare_paired(challenger, champion)
    assert 0 < result.lower < result.gain < result.upper < 0.1
    assert result.gain == pytest.approx(result.challenger_mean - result.champion_mean)
    assert decide(result, 0.0)
    # The same differences with the roles swapped: the mirror image.
    reverse = compare_paired(champion, challenger)
    assert reverse.gain == pytest.approx(-result.gain)
    assert not decide(reverse, 0.0)
    # Partial credit (DROP's F1) that nets out: no promotion.
    a = {f"d{i}": (0.5 if i % 2 else 1.0) for i in range(100)}
    b = {f"d{i}": (1.0 if i % 2 else 0.5) for i in range(100)}
    assert not decide(compare_paired(a, b), 0.0)


def test_scores_may_be_ints_and_bools():
    result = compare_paired({"a": 1, "b": True, "c": 0}, {"a": 0, "b": False, "c": 0.0})
    assert result.challenger_mean == pytest.approx(2 / 3)


def test_different_samples_are_refused_with_one_line_that_says_what_to_do():
    challenger, champion = paired(50, wins=5, losses=1, both=30)
    del champion["s0003"]
    champion["extra\nid"] = 1.0
    challenger["s9999"] = 0.0
    with pytest.raises(ConfigError) as error:
        compare_paired(challenger, champion)
    message = one_line(error)
    assert "2 ids only in the challenger's results, 1 only in the champion's" in message
    assert "score both on the same test samples" in message


@pytest.mark.parametrize(
    ("challenger", "champion", "expected"),
    [
        ({}, {}, "no samples to compare"),
        ({"a": 1.5}, {"a": 1.0}, "the challenger score of sample 'a' is 1.5"),
        ({"a": 0.5}, {"a": -0.1}, "the champion score of sample 'a' is -0.1"),
        ({"a": float("nan")}, {"a": 1.0}, "is nan"),
        ({"a": float("inf")}, {"a": 1.0}, "is inf"),
        ({"a": "1"}, {"a": 1.0}, "is '1'"),
        ({"a": None}, {"a": 1.0}, "is None"),
        ({1: 1.0}, {1: 1.0}, "sample id 1 is not a string"),
    ],
)
def test_bad_values_are_refused_with_one_line(challenger, champion, expected):
    with pytest.raises(ConfigError) as error:
        compare_paired(challenger, champion)
    assert expected in one_line(error)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"confidence": 0.0}, "confidence must be in (0, 1)"),
        ({"confidence": 1.0}, "confidence must be in (0, 1)"),
        ({"confidence": 95}, "confidence must be in (0, 1)"),
        ({"confidence": float("nan")}, "confidence must be in (0, 1)"),
        ({"resamples": 999}, "resamples must be an integer of at least 1000"),
        ({"resamples": 5000.0}, "resamples must be an integer of at least 1000"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_settings_are_refused_with_one_line(settings, expected):
    with pytest.raises(ConfigError) as error:
        compare_paired({"a": 1.0}, {"a": 0.0}, **settings)
    assert expected in one_line(error)


def test_the_confidence_sets_the_width():
    challenger, champion = paired(300, wins=30, losses=10, both=200)
    narrow = compare_paired(challenger, champion, confidence=0.8)
    wide = compare_paired(challenger, champion, confidence=0.99)
    assert wide.lower < narrow.lower < narrow.gain < narrow.upper < wide.upper


def test_sample_ids_hash_ignores_order_and_repetition_but_not_content():
    ids = ["b", "a", "c"]
    digest = sample_ids_sha256(ids)
    assert len(digest) == 64
    assert sample_ids_sha256(reversed(ids)) == digest
    assert sample_ids_sha256(["a", "a", "b", "c"]) == digest
    assert sample_ids_sha256(["a", "b"]) != digest
    assert sample_ids_sha256(["a,b", "c"]) != sample_ids_sha256(["a", "b,c"])  # unambiguous
    with pytest.raises(ConfigError) as error:
        sample_ids_sha256(["a", 1])
    assert "sample id 1 is not a string" in one_line(error)
    assert (
        compare_paired({"a": 1.0, "b": 0.0, "c": 1.0}, {"c": 0.0, "b": 0.0, "a": 1.0}).sample_ids_sha256
        == digest
    )


def test_tags_are_flat_reproducible_strings_that_read_back():
    result = compare_paired(*paired(200, wins=30, losses=5, both=120))
    tags = result.to_tags()
    assert all(key.startswith(TAG_PREFIX) and isinstance(value, str) for key, value in tags.items())
    assert tags[TAG_PREFIX + "n"] == "200"
    assert tags[TAG_PREFIX + "gain"] == "0.125000"
    assert tags[TAG_PREFIX + "challenger_mean"] == "0.750000"
    assert tags[TAG_PREFIX + "champion_mean"] == "0.625000"
    assert tags[TAG_PREFIX + "confidence"] == "0.95"
    assert tags[TAG_PREFIX + "resamples"] == "10000"
    assert tags[TAG_PREFIX + "seed"] == "0"
    assert tags[TAG_PREFIX + "method"] == METHOD
    assert tags[TAG_PREFIX + "sample_ids_sha256"] == result.sample_ids_sha256
    assert set(tags) == {TAG_PREFIX + name for name in PairedComparison.__dataclass_fields__}
    assert compare_paired(*paired(200, wins=30, losses=5, both=120)).to_tags() == tags
    back = PairedComparison.from_tags({**tags, "other": "x"})
    assert back.to_tags() == tags
    assert back.lower == pytest.approx(result.lower, abs=1e-6)
    tie = compare_paired(*paired(10, wins=1, losses=1, both=3)).to_tags()
    assert not any(value.startswith("-0.000000") for value in tie.values())
    with pytest.raises(ConfigError) as error:
        PairedComparison.from_tags({TAG_PREFIX + "n": "200"})
    assert "holds no promotion evidence" in one_line(error)


def test_meta_agents_are_compared_on_their_pooled_task_results():
    gsm_new, gsm_old = paired(200, wins=20, losses=4, both=120)
    he_new, he_old = paired(131, wins=12, losses=3, both=100)
    result = compare_meta_agents(
        {"gsm8k": gsm_new, "humaneval": he_new}, {"gsm8k": gsm_old, "humaneval": he_old}
    )
    assert result.n == 331
    assert result.method == METHOD_STRATIFIED
    assert result.gain == pytest.approx((16 + 9) / 331)
    assert result.challenger_mean == pytest.approx((140 + 112) / 331)
    assert 0 < result.lower < result.gain < result.upper
    assert decide(result, 0.0)
    ids = [f"gsm8k/{i}" for i in gsm_new] + [f"humaneval/{i}" for i in he_new]
    assert result.sample_ids_sha256 == sample_ids_sha256(ids)
    # Same ids in two tasks stay distinct samples (both tasks use s0000...).
    assert set(gsm_new) & set(he_new)
    # Deterministic, whatever the order of the tasks.
    swapped = compare_meta_agents(
        {"humaneval": he_new, "gsm8k": gsm_new}, {"gsm8k": gsm_old, "humaneval": he_old}
    )
    assert swapped == result
    # A gain on one task and a loss on another net out: no promotion.
    loss_new, loss_old = paired(200, wins=4, losses=20, both=120)
    mixed = compare_meta_agents({"gsm8k": gsm_new, "mbpp": loss_new}, {"gsm8k": gsm_old, "mbpp": loss_old})
    assert mixed.gain == pytest.approx(0.0)
    assert not decide(mixed, 0.0)


def test_one_task_meta_comparison_matches_the_workflow_comparison():
    new, old = paired(150, wins=15, losses=6, both=90)
    meta = compare_meta_agents({"svamp": new}, {"svamp": old}, seed=3)
    plain = compare_paired(new, old, seed=3)
    assert (meta.gain, meta.lower, meta.upper) == (plain.gain, plain.lower, plain.upper)


@pytest.mark.parametrize(
    ("challenger", "champion", "expected"),
    [
        (
            {"gsm8k": {"a": 1.0}},
            {"mbpp": {"a": 1.0}},
            "different tasks (only the challenger: gsm8k; only the",
        ),
        ({"gsm8k": {"a": 1.0}}, {"gsm8k": {"b": 1.0}}, "different samples on task gsm8k: 1 ids only"),
        ({}, {}, "no tasks to compare"),
        ({"gsm8k": {}}, {"gsm8k": {}}, "no samples to compare on task gsm8k"),
        ({"a/b": {"a": 1.0}}, {"a/b": {"a": 1.0}}, "task name 'a/b' must be"),
        ({"gsm8k": {"a": 2.0}}, {"gsm8k": {"a": 1.0}}, "the challenger's gsm8k score of sample 'a' is 2.0"),
    ],
)
def test_meta_agent_inputs_are_checked(challenger, champion, expected):
    with pytest.raises(ConfigError) as error:
        compare_meta_agents(challenger, champion)
    assert expected in one_line(error)


def coverage(draw_pair, true_gain: float, trials: int, n: int) -> tuple[float, float]:
    """Share of ``trials`` intervals (each on ``n`` fresh samples) that hold ``true_gain``, and share
    whose lower bound is above it (a false claim of more gain than there is)."""
    rng = random.Random(12345)
    held = above = 0
    for trial in range(trials):
        challenger, champion = {}, {}
        for i in range(n):
            challenger[str(i)], champion[str(i)] = draw_pair(rng)
        result = compare_paired(challenger, champion, resamples=1000, seed=trial)
        held += result.lower <= true_gain <= result.upper
        above += result.lower > true_gain
    return held / trials, above / trials


def test_the_interval_covers_the_true_gain_about_as_often_as_it_claims():
    # 0/1 scores: the challenger alone right 10% of the time, the champion alone 5%: gain 0.05.
    def exact_match(rng: random.Random) -> tuple[float, float]:
        u = rng.random()
        if u < 0.10:
            return 1.0, 0.0
        if u < 0.15:
            return 0.0, 1.0
        return (1.0, 1.0) if u < 0.75 else (0.0, 0.0)

    held, above = coverage(exact_match, 0.05, trials=300, n=200)
    assert 0.90 <= held <= 0.99
    assert above <= 0.05

    # Fractional: champion uniform on [0, 1], challenger its square root: gain 2/3 - 1/2.
    def fractional(rng: random.Random) -> tuple[float, float]:
        x = rng.random()
        return x**0.5, x

    held, above = coverage(fractional, 2 / 3 - 1 / 2, trials=300, n=100)
    assert 0.90 <= held <= 0.99
    assert above <= 0.05


def test_no_gain_is_rarely_promoted():
    # The challenger and champion are equally good (each alone right 3% of the time): the share of
    # promotions at margin 0 stays near the 2.5% the one-sided bound allows.
    rng = random.Random(99)
    promoted = 0
    trials = 300
    for trial in range(trials):
        challenger, champion = {}, {}
        for i in range(150):
            u = rng.random()
            pair = (
                (1.0, 0.0) if u < 0.03 else (0.0, 1.0) if u < 0.06 else (1.0, 1.0) if u < 0.7 else (0.0, 0.0)
            )
            challenger[str(i)], champion[str(i)] = pair
        promoted += decide(compare_paired(challenger, champion, resamples=1000, seed=trial), 0.0)
    assert promoted / trials <= 0.06


def test_a_thousand_samples_and_ten_thousand_resamples_are_quick_enough_to_run_in_a_test():
    # Not a timing assertion: a vectorized implementation makes this one of many cheap calls here.
    rng = random.Random(5)
    champion = {f"x{i}": rng.random() for i in range(1000)}
    challenger = {k: rng.random() for k in champion}
    result = compare_paired(challenger, champion, resamples=10_000)
    assert result.n == 1000
    assert result.lower < result.gain < result.upper
