"""Stage: the (task, episode) pairs a training pipeline collects, for its ``ParallelFor``."""

from kfp import dsl

from w4s.pipelines import settings


@dsl.component(base_image=settings.IMAGE, install_kfp_package=False)
def plan_episodes(tasks: list, episodes: int) -> list:
    """One item per (task, episode): ``"TASK/N"`` (kfp.local loops over plain items only)."""
    from w4s.pipelines.stages.plan_episodes import run

    return run(tasks, episodes)
