"""The promotion gate: does a registered version become ``champion``?

Workflows (``w4s-workflow-<task>``): the challenger and the champion are compared on the same test
samples, the ones the challenger was accepted on, with the executor that scored it. Per-sample
results are reused where the same executor scored the same workflow source on the same ids (the
version's own test results, or a recorded ``w4s evaluate`` run); otherwise the workflow is evaluated
now, and that evaluation is recorded for the next time. No champion yet: the challenger is compared
with the best shipped baseline workflow of its optimization run (by validation score).

Meta-agents (``w4s-meta-agent``): the held-out test results of the workflows each version wrote (the
registered workflows whose lineage names it), per task, pooled over the tasks both have: see
:func:`w4s.tracking.stats.compare_meta_agents`. No champion yet: against the best shipped baselines.

The rule, for both (:mod:`w4s.tracking.stats`): a seeded paired bootstrap of the per-sample
differences; promote only when the lower confidence bound of the gain exceeds the margin. The
decision and its evidence are tags on the challenger; the alias moves only if the champion compared
against is still the champion (read, compare, re-read under the registry's lock), and promoting a
champion again changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass, replace

from w4s import api, workflows
from w4s.config import Config, option, positive
from w4s.errors import ConfigError
from w4s.evaluation import EvaluationConfig
from w4s.llm.config import EndpointConfig
from w4s.sandbox.config import SandboxConfig
from w4s.tracking import registry as reg
from w4s.tracking.stats import (
    PairedComparison,
    compare_meta_agents,
    compare_paired,
    decide,
    sample_ids_sha256,
)
from w4s.tracking.store import TrackingConfig

log = logging.getLogger(__name__)

DECISION = "w4s.promotion.decision"
MARGIN = "w4s.promotion.margin"
AGAINST = "w4s.promotion.against"
DECIDED_AT = "w4s.promotion.decided_at"
EXECUTOR = "w4s.promotion.executor"


@dataclass
class PromotionConfig(Config):
    # not ``version``: to_dict() writes the schema's version under that key
    model_version: str | None = option(
        None, "the version to promote (default: the one aliased challenger)", flag="version"
    )
    margin: float = option(
        0.0,
        "promote only when the lower confidence bound of the gain exceeds this (a negative margin "
        "accepts a version at most that much worse)",
        lambda v: -1.0 < v < 1.0,
        "between -1 and 1",
    )
    confidence: float = option(
        0.95, "two-sided confidence of the gain's interval", lambda v: 0 < v < 1, "in (0, 1)"
    )
    resamples: int = option(10_000, "bootstrap resamples", lambda v: v >= 1000, "at least 1000")
    seed: int = option(
        0, "bootstrap seed (the same results always give the same interval)", lambda v: v >= 0, ">= 0"
    )
    concurrency: int = option(8, "samples evaluated at once when results must be made", positive)


@dataclass(frozen=True)
class Decision:
    """What ``promote`` decided, and why."""

    name: str
    version: str
    against: str  # "version 3", "baseline math/cot", "version 2's workflows", "baselines"
    promoted: bool  # the rule says promote
    changed: bool  # the champion alias moved
    reason: str
    comparison: PairedComparison | None
    margin: float
    evaluated: tuple[str, ...] = ()  # what had to be evaluated now (the rest was reused)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["evaluated"] = list(self.evaluated)
        return data


async def apromote(
    model: str,
    config: PromotionConfig | None = None,
    *,
    executor: EndpointConfig | None = None,
    sandbox: SandboxConfig | None = None,
    data_dir: str | os.PathLike | None = None,
    tracking: TrackingConfig | None = None,
) -> Decision:
    """Decide whether ``model``'s challenger (or ``config.model_version``) becomes champion, and move the
    alias when it does. ``executor``: the endpoint for evaluations that must be made now (its model is
    always the one the challenger was scored with); ``data_dir``: the benchmark files."""
    config = config or PromotionConfig()
    tracking = replace(tracking or TrackingConfig(), register=False)
    registry = api.registry_of(tracking)
    name = reg.parse_reference(model).name
    champion = registry.champion(name)
    if config.model_version is None and reg.CHALLENGER not in registry.aliases(name):
        held = "none" if champion is None else f"version {champion.version}"
        return Decision(
            name,
            "",
            "",
            False,
            False,
            f"no version is aliased challenger (champion: {held}); nothing to do",
            None,
            config.margin,
        )
    challenger = registry.version(
        reg.Reference(name, version=config.model_version)
        if config.model_version
        else reg.Reference(name, reg.CHALLENGER)
    )
    version = str(challenger.version)
    if champion is not None and str(champion.version) == version:
        return Decision(
            name, version, f"version {version}", True, False, "already the champion", None, config.margin
        )
    judge = _Judge(
        registry, config, executor or EndpointConfig(), sandbox or SandboxConfig(), data_dir, tracking
    )
    if name == reg.META_AGENT:
        comparison, against = await judge.meta_agents(challenger, champion)
    elif name.startswith(reg.WORKFLOW_PREFIX):
        comparison, against = await judge.workflows(challenger, champion)
    else:
        raise ConfigError(
            f"{name} is not a w4s model; promote {reg.META_AGENT} or {reg.WORKFLOW_PREFIX}<task>"
        )
    promoted = decide(comparison, config.margin)
    evidence = {
        **comparison.to_tags(),
        DECISION: "promoted" if promoted else "rejected",
        MARGIN: repr(float(config.margin)),
        AGAINST: against,
        EXECUTOR: judge.executor_model or "",
    }
    recorded = challenger.tags or {}
    if any(recorded.get(key) != value for key, value in evidence.items()):  # the same decision: no change
        registry.set_tags(
            challenger, {**evidence, DECIDED_AT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        )
    rule = f"gain {comparison.gain:+.4f}, {comparison.confidence:.0%} interval [{comparison.lower:+.4f}, {comparison.upper:+.4f}] over {comparison.n} samples"
    if not promoted:
        reason = f"not promoted: the lower bound {comparison.lower:+.4f} does not exceed the margin {config.margin:+.4f} ({rule})"
        return Decision(
            name, version, against, False, False, reason, comparison, config.margin, tuple(judge.evaluated)
        )
    expected = None if champion is None else str(champion.version)
    if not registry.move_champion(name, version, expected=expected):
        now = registry.aliases(name).get(reg.CHAMPION)
        reason = (
            f"the champion changed to version {now} while version {version} was compared with {against}; "
            "nothing moved: run promote again to compare with the new champion"
        )
        return Decision(
            name, version, against, True, False, reason, comparison, config.margin, tuple(judge.evaluated)
        )
    return Decision(
        name,
        version,
        against,
        True,
        True,
        f"promoted over {against} ({rule})",
        comparison,
        config.margin,
        tuple(judge.evaluated),
    )


def promote(*args, **kwargs) -> Decision:
    """:func:`apromote` from synchronous code."""
    return asyncio.run(apromote(*args, **kwargs))


class _Judge:
    """Gathers per-sample scores, reusing what the store holds."""

    def __init__(self, registry, config, executor, sandbox, data_dir, tracking):
        self.registry = registry
        self.config = config
        self.executor = executor
        self.sandbox = sandbox
        self.data_dir = data_dir
        self.tracking = tracking
        self.evaluated: list[str] = []
        self.executor_model: str | None = None

    def _settings(self) -> dict:
        return {
            "confidence": self.config.confidence,
            "resamples": self.config.resamples,
            "seed": self.config.seed,
        }

    async def workflows(self, challenger, champion) -> tuple[PairedComparison, str]:
        _, _, evaluation = self.registry.workflow(reg.version_reference(challenger))
        mine = _scores(evaluation, f"{challenger.name} version {challenger.version}")
        task = challenger.tags[reg.TAG_TASK]
        self.executor_model = evaluation["executor"]
        if champion is not None:
            _, source, stored = self.registry.workflow(reg.version_reference(champion))
            against = f"version {champion.version}"
            theirs = await self._scores_of(task, source, against, mine, stored)
        else:
            baseline = (challenger.tags or {}).get(reg.TAG_BASELINE)
            name, source = self._baseline(task, baseline)
            against = f"baseline {name}"
            theirs = await self._scores_of(task, source, against, mine, None)
        return compare_paired(mine, theirs, **self._settings()), against

    async def meta_agents(self, challenger, champion) -> tuple[PairedComparison, str]:
        mine = self._written_by(challenger.version)
        if not mine:
            raise ConfigError(
                f"no registered workflow was written by {reg.META_AGENT} version {challenger.version}; run "
                f"`w4s optimize --meta-model mlflow:{reg.META_AGENT}@{challenger.version} --register` on the "
                "benchmark tasks first"
            )
        theirs_by_task = {} if champion is None else self._written_by(champion.version)
        if champion is not None:
            common = sorted(set(mine) & set(theirs_by_task))
            if not common:
                raise ConfigError(
                    f"version {challenger.version} wrote workflows for {', '.join(sorted(mine))} and the champion "
                    f"(version {champion.version}) for {', '.join(sorted(theirs_by_task)) or 'none'}: no task in common; "
                    "optimize with both on the same tasks"
                )
        else:
            common = sorted(mine)
        challenger_scores, champion_scores = {}, {}
        for task in common:
            _, _, evaluation = self.registry.workflow(reg.version_reference(mine[task]))
            scores = _scores(evaluation, f"{mine[task].name} version {mine[task].version}")
            if self.executor_model not in (None, evaluation["executor"]):
                raise ConfigError(
                    f"the workflows of version {challenger.version} were scored with different executors "
                    f"({self.executor_model}, {evaluation['executor']}); promote meta-agents benchmarked with one"
                )
            self.executor_model = evaluation["executor"]
            if champion is not None:
                other = theirs_by_task[task]
                _, source, stored = self.registry.workflow(reg.version_reference(other))
                champion_scores[task] = await self._scores_of(
                    task, source, f"{other.name} version {other.version}", scores, stored
                )
            else:
                name, source = self._baseline(task, (mine[task].tags or {}).get(reg.TAG_BASELINE))
                champion_scores[task] = await self._scores_of(
                    task, source, f"baseline {name} on {task}", scores, None
                )
            challenger_scores[task] = scores
        against = "baselines" if champion is None else f"version {champion.version}'s workflows"
        return compare_meta_agents(challenger_scores, champion_scores, **self._settings()), against

    def _written_by(self, version: str) -> dict:
        """task -> the latest registered workflow version that meta-agent ``version`` wrote."""
        found: dict = {}
        for name in self.registry.names(reg.WORKFLOW_PREFIX):
            for candidate in self.registry.versions(name):
                tags = candidate.tags or {}
                if tags.get(reg.TAG_META_NAME) == reg.META_AGENT and tags.get(reg.TAG_META_VERSION) == str(
                    version
                ):
                    found[tags[reg.TAG_TASK]] = candidate  # versions come oldest first
        return found

    def _baseline(self, task: str, name: str | None) -> tuple[str, str]:
        """A shipped example workflow (never a path: the name comes from the store)."""
        family = api.load_task(task).family
        shipped = workflows.examples(family)
        if not name or name not in shipped:
            raise ConfigError(
                f"the challenger names no shipped baseline of its run ({name!r}; {family} has "
                f"{', '.join(shipped)}); register it from its optimize run folder, or promote once a champion exists"
            )
        return f"{family}/{name}", shipped[name]

    async def _scores_of(
        self, task: str, source: str, label: str, mine: dict[str, float], stored: dict | None
    ) -> dict[str, float]:
        """Per-sample test scores of ``source`` on the ids of ``mine`` by the challenger's executor:
        the stored ones if they match, else a recorded evaluation, else evaluated now (and recorded)."""
        ids_sha = sample_ids_sha256(mine)
        if stored is not None and stored.get("executor") == self.executor_model and stored.get("complete"):
            scores = _scores(stored, label)
            if set(scores) == set(mine):
                return scores
        found = self.registry.stored_evaluations(task, reg.sha256_text(source), self.executor_model, ids_sha)
        if found is not None:
            scores = _scores(found, label)
            if set(scores) == set(mine):
                log.info("reusing the recorded test results of %s", label)
                return scores
        log.info(
            "evaluating %s on the %d test samples of the challenger with %s",
            label,
            len(mine),
            self.executor_model,
        )
        self.evaluated.append(label)
        result = await api.aevaluate(
            api.Workflow(label, source),
            task,
            EvaluationConfig(split="test", concurrency=self.config.concurrency),
            replace(self.executor, model=self.executor_model),
            self.sandbox,
            data_dir=self.data_dir,
            tracking=self.tracking,
            sample_ids=list(mine),
        )
        if not result.complete:
            raise ConfigError(
                f"the evaluation of {label} did not finish ({result.budget_exhausted}); nothing was decided"
            )
        return {s.id: s.score for s in result.samples}


def _scores(evaluation: dict, label: str) -> dict[str, float]:
    """sample id -> score of a complete evaluation JSON."""
    samples = evaluation.get("samples") if isinstance(evaluation, dict) else None
    if not isinstance(samples, list) or not evaluation.get("complete"):
        raise ConfigError(f"the test results of {label} are incomplete; evaluate it on the whole test subset")
    return {s["id"]: float(s["score"]) for s in samples}
