"""Stage: trajectories from several tasks and episodes → one merged training set with rewards and RWR
weights (``Dataset``), deduplicated and filtered (:func:`w4s.training.trainset.merge`), the reward
histogram (``HTML``), and the example count and weight summary (``Metrics``).

Its ``status`` output steers the pipeline: ``ok``; ``uniform`` when every reward is equal (a small
meta-agent may write no working workflow: RWR is then plain fine-tuning on its own replies, which the
pipeline still runs, and promotion judges the result like any other); ``empty`` when no example is
left, and training, benchmark and registration are skipped."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from w4s.pipelines import settings


@dsl.component(base_image=settings.IMAGE, install_kfp_package=False)
def compute_rewards(
    trajectories: Input[List[Dataset]],
    train_set: Output[Dataset],
    histogram: Output[HTML],
    metrics: Output[Metrics],
    merge_config: dict = {},
    temperature: float = 0.0,
) -> str:
    """Merge the trajectories of every collect task into one training set with RWR weights."""
    from w4s.pipelines.stages.compute_rewards import run

    status, values = run(
        trajectories=[t.path for t in trajectories],
        train_set=train_set.path,
        histogram=histogram.path,
        merge_config=merge_config,
        temperature=temperature,
    )
    for name, value in values.items():
        metrics.log_metric(name, value)
    return status
