"""The code scorer against HumanEval's own references: every canonical solution passes, every wrong body fails."""

from w4s.tasks.fidelity import humaneval_fidelity


def test_humaneval_fidelity(data_dir):
    report = humaneval_fidelity(data_dir)
    assert report["problems"] == 164
    assert report["canonical"]["passed"] == 164, report["canonical"]["unexpected"]
    assert report["wrong_body"]["passed"] == 0, report["wrong_body"]["unexpected"]
    assert report["ok"]
