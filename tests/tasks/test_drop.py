import pytest

from w4s.tasks import get_task
from w4s.tasks.drop import drop_f1, drop_metrics


@pytest.mark.parametrize(
    ("predicted", "reference", "f1"),
    [
        ("Houston", "Houston|Browns", 1.0),
        ("the Browns", "Houston|Browns", 1.0),
        ("50.6", "50.6|49.7", 1.0),
        ("50.60", "50.6", 1.0),  # numbers compare as floats
        ("2,000", "2000", 1.0),  # punctuation goes first, then "2000" normalises as a number
        ("51", "50.6", 0.0),
        ("under the age of 18", "under the age of 18 and 25 to 44 and 45 to 64", 0.57),
        ("Pakistanis", "Pakistanis and Filipinos|Pakistani and Filipino", 0.5),
        ("7 yards", "7", 0.67),
        ("8 yards", "7", 0.0),  # a wrong number scores nothing even with overlapping words
        ("", "7", 0.0),
    ],
)
def test_f1_matches_the_reference_definition(predicted, reference, f1):
    assert drop_f1(predicted, reference) == f1


def test_multi_span_alignment_and_exact_match():
    assert drop_metrics(["Houston", "Browns"], ["Browns", "Houston"]) == (1.0, 1.0)
    assert drop_metrics(["Houston"], ["Browns", "Houston"]) == (0.0, 0.5)


def test_drop_loads_protocol_splits(data_dir):
    task = get_task("drop")
    validation = task.load("validation", data_dir)
    assert len(validation) == 128 and len(task.load("test", data_dir)) == 800
    assert "Question:" in validation[0].prompt and not validation[0].prompt.endswith("Answer:")
    assert all(task.score(s, s.expected.split("|")[0]).value == 1.0 for s in validation)
    assert task.score(validation[0], None).value == 0.0
