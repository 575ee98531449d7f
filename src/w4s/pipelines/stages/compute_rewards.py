"""Stage: trajectories from several tasks and episodes → one merged training set with rewards and RWR
weights (``Dataset``), deduplicated and filtered (:func:`w4s.training.trainset.merge`), the reward
histogram (``HTML``), and the example count and weight summary (``Metrics``).

Its ``status`` output steers the pipeline: ``ok``; ``uniform`` when every reward is equal (a small
meta-agent may write no working workflow: RWR is then plain fine-tuning on its own replies, which the
pipeline still runs, and promotion judges the result like any other); ``empty`` when no example is
left, and training, benchmark and registration are skipped."""

import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def run(
    *,
    trajectories: list[str],
    train_set: str,
    histogram: str,
    merge_config: dict | None = None,
    temperature: float = 0.0,
) -> tuple[str, dict]:
    """Merge ``trajectories`` into ``train_set``; returns (status, metrics)."""
    from w4s.pipelines.params import component_logging

    component_logging()
    from w4s.pipelines import params
    from w4s.training.trainset import MergeConfig, merge

    # equal rewards still train (plain fine-tuning; the promotion gate judges it): see the docstring
    config = params.config(
        MergeConfig, {"allow_uniform_weights": True, **(merge_config or {})}, temperature=temperature or None
    )
    with tempfile.TemporaryDirectory(prefix="w4s-merge-") as scratch:
        result = merge([Path(p) for p in trajectories], Path(scratch), config)
        shutil.copyfile(Path(scratch) / "train.jsonl", train_set)
        picture = Path(scratch) / "rewards.png"
        if picture.is_file():
            Path(histogram).write_text(params.picture_html(picture, "rewards of the training examples"))
        else:
            Path(histogram).write_text("<!doctype html><p>no histogram (matplotlib is not installed)</p>\n")
    values = {"examples": float(result.examples), "records": float(result.records)}
    values["duplicates"] = float(result.duplicates)
    values.update({f"dropped_{key}": float(n) for key, n in result.dropped.items()})
    values.update({f"reward_{key}": float(v) for key, v in (result.rewards or {}).items() if v is not None})
    values.update({f"weight_{key}": float(v) for key, v in (result.weights or {}).items() if v is not None})
    log.info("compute_rewards: %s: %s", result.status, result.message)
    return result.status, values
