import pytest

from w4s.tasks import get_task, task_names
from w4s.tasks.base import protocol_split
from w4s.tasks.word_problems import numbers_match, parse_number


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("18", 18),
        (18, 18),
        (18.0, 18),
        ("$1,234.00", 1234),
        ("The answer is 7.", 7),
        ("#### 42", 42),
        ("It costs 18 dollars", 18),
        ("\\boxed{\\frac{3}{4}}", 0.75),
        ("3/4", 0.75),
        ("-5", -5),
        ("12%", 12),
        ("Answer: 1,000,000", 1_000_000),
        ("first 3 then 5", 5),
        ("3244047.1", 3244047.0999999996),
        (["70000"], 70000),
        ("1.5e3", 1500),
        (".5", 0.5),
    ],
)
def test_numbers_that_match(answer, expected):
    assert numbers_match(answer, expected).value == 1.0


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("17", 18),
        ("no idea", 18),
        (None, 0),
        (True, 1),
        ("3244047", 3244047.0999999996),
        ({"x": 18}, 18),
        (float("nan"), 1),
        ("18.01", 18),
        ("1450001", 1450000),
    ],
)
def test_numbers_that_do_not(answer, expected):
    assert numbers_match(answer, expected).value == 0.0


def test_parse_number_reports_nothing_for_text():
    assert parse_number("none") is None


def test_protocol_split_is_deterministic_and_disjoint():
    items = list(range(1000))
    validation, test = protocol_split(items, "validation"), protocol_split(items, "test")
    assert len(validation) == 128 and len(test) == 800
    assert not set(validation) & set(test)
    assert validation == protocol_split(items, "validation")
    assert validation != items[:128]  # shuffled, with the fixed seed


@pytest.mark.parametrize("name", ["gsm8k", "gsm_hard", "mgsm", "svamp"])
def test_math_tasks_load_and_score_their_own_references(name, data_dir):
    task = get_task(name)
    validation, test = task.load("validation", data_dir), task.load("test", data_dir)
    assert (len(validation), len(test)) == (128, 800)
    assert not {s.id for s in validation} & {s.id for s in test}
    assert all(task.score(s, s.expected).value == 1.0 for s in validation + test)
    assert all(task.score(s, f"So the answer is {s.expected:,}.").value == 1.0 for s in validation)
    assert sum(task.score(s, s.expected * 1.5 + 1).value for s in validation) == 0
    assert task.description and task.family == "math"


def test_mgsm_covers_all_languages(data_dir):
    langs = {s.extra["lang"] for s in get_task("mgsm").load("test", data_dir)}
    assert langs == {"bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"}


def test_registry_names_and_unknown_task():
    from w4s.errors import ConfigError

    assert task_names() == ["drop", "gsm8k", "gsm_hard", "humaneval", "mbpp", "mgsm", "svamp"]
    with pytest.raises(ConfigError, match="unknown task 'gsm9k'; choose one of drop, gsm8k"):
        get_task("gsm9k")


def test_missing_data_is_a_clear_error(tmp_path):
    from w4s.errors import ConfigError

    with pytest.raises(ConfigError, match="gsm8k/test.jsonl is missing; point --data-dir"):
        get_task("gsm8k").load("test", tmp_path)
    with pytest.raises(ConfigError, match="unknown split 'train'"):
        get_task("gsm8k").load("train", tmp_path)
