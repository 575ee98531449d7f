"""One Kubeflow component per stage, each a thin layer over the public API of :mod:`w4s`: the
component function (what KFP ships and runs) only imports its module's ``run`` function and calls it;
``run`` turns the parameters into the stage's config dataclass, calls :mod:`w4s`, and writes the
typed outputs. Tests call ``run`` directly and the components under ``kfp.local``."""

from w4s.pipelines.components.benchmark import benchmark
from w4s.pipelines.components.collect_trajectories import collect_trajectories
from w4s.pipelines.components.compute_rewards import compute_rewards
from w4s.pipelines.components.evaluate_workflow import evaluate_workflow
from w4s.pipelines.components.plan_episodes import plan_episodes
from w4s.pipelines.components.record_failure import record_failure
from w4s.pipelines.components.register import register_meta_agent, register_workflow
from w4s.pipelines.components.train_rwr import train_rwr

__all__ = [
    "benchmark",
    "collect_trajectories",
    "compute_rewards",
    "evaluate_workflow",
    "plan_episodes",
    "record_failure",
    "register_meta_agent",
    "register_workflow",
    "train_rwr",
]
