"""The statistics behind ``w4s registry promote``: is the challenger really better than the champion?

Both versions are scored on the *same* test samples, so each sample gives one paired difference
``challenger score - champion score`` (in [-1, 1]; scores are in [0, 1], fractional for F1-scored
tasks such as DROP). The gain is the mean of these differences. Its confidence interval comes from a
**paired bootstrap with a percentile interval**: resample the samples with replacement (the pair
stays together, which cancels what makes one sample hard for both), take the mean difference of each
of ``resamples`` resamples, and read the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
quantiles. The random generator is seeded by ``seed`` (never the clock) and the samples are taken in
sorted id order, so the same results always give the same interval (with the same numpy, which does
not promise its random streams across versions; another seed moves the bounds by about 0.001-0.005).
**Promote only when the lower bound exceeds the margin** (:func:`decide`): with the default 0.95
that is a one-sided test at 2.5%, so a version that is no better is promoted about one time in forty
at most, and a tie (every sample scored the same) never is when the margin is >= 0.

Why this method, for every task: one rule serves exact-match (0/1) scores, fractional scores and the
meta-agent's pooled comparison alike. For 0/1 scores the exact alternative, a conditional McNemar
(sign) test on the samples where the two disagree, is far more conservative than its nominal level:
in simulations of no real gain (50 to 1,000 samples, 1% to 10% of them discordant) it promoted
0.2%-1.2% of the time where 2.5% is allowed, so it would miss real gains, and its interval for the
gain is poor when one side never wins. The bootstrap's rate was 1.7%-2.7% in the same simulations,
and Tango's score interval (the unconditional asymptotic alternative) was no better. BCa was not
chosen: for a mean over hundreds of samples its corrections are small, and its bias estimate is
unstable when many resampled means equal the observed one (0/1 scores with few disagreements). The
percentile interval's known weakness is a slightly narrow interval with very few samples, so test on
at least a few dozen. When every sample is scored the same by both, the interval is [0, 0].

No champion yet: the registry compares the challenger with the best shipped baseline workflow on
the same samples, with the same function and the same rule.

The meta-agent (:func:`compare_meta_agents`): per task, the per-sample test scores of the workflow
each meta-agent wrote. The differences of all tasks are pooled (ids become ``<task>/<id>``), so the
gain is the mean over every sample of every task, and a task with more test samples weighs more.
The bootstrap resamples within each task (a stratified bootstrap), because each task's number of
test samples is fixed by its split, not drawn at random.

Pure functions: no MLflow here. numpy is imported inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING

from w4s.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

TAG_PREFIX = "w4s.promotion."
METHOD = "paired-bootstrap-percentile"
METHOD_STRATIFIED = "paired-bootstrap-percentile-stratified-by-task"
MIN_RESAMPLES = 1000
TASK_SEPARATOR = "/"

# At most this many resampled indices are held at once (about 4 MB); it bounds memory, never the result.
_CHUNK_ELEMENTS = 500_000


@dataclass(frozen=True)
class PairedComparison:
    """The evidence of one promotion decision: challenger vs champion on the same ``n`` samples."""

    n: int
    challenger_mean: float
    champion_mean: float
    gain: float
    lower: float
    upper: float
    confidence: float
    method: str
    resamples: int
    seed: int
    sample_ids_sha256: str

    def to_tags(self) -> dict[str, str]:
        """Flat string tags for a registry version, all named ``w4s.promotion.<field>``. Scores,
        gain and bounds have six decimals (``"0.125000"``), the confidence its shortest exact form
        (``"0.95"``), counts are integers: the same comparison always gives the same strings."""
        fixed = {"challenger_mean", "champion_mean", "gain", "lower", "upper"}
        tags: dict[str, str] = {}
        for name, value in self._fields():
            if name in fixed:
                text = f"{value:.6f}"
                tags[TAG_PREFIX + name] = "0.000000" if text == "-0.000000" else text
            elif name == "confidence":
                tags[TAG_PREFIX + name] = repr(float(value))
            else:
                tags[TAG_PREFIX + name] = str(value)
        return tags

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> PairedComparison:
        """Read back what :meth:`to_tags` wrote (numbers as rounded there); other tags are ignored."""
        missing = [name for name, _ in _FIELD_TYPES if TAG_PREFIX + name not in tags]
        if missing:
            raise ConfigError(
                f"the version's tags lack {', '.join(TAG_PREFIX + m for m in missing)}: it holds no "
                "promotion evidence; run `w4s registry promote` to compare it"
            )
        values = {}
        for name, kind in _FIELD_TYPES:
            text = tags[TAG_PREFIX + name]
            try:
                values[name] = kind(text)
            except ValueError:
                raise ConfigError(
                    f"tag {TAG_PREFIX + name} is {text!r}, not a {kind.__name__}; promote the version again"
                ) from None
        return cls(**values)

    def _fields(self) -> list[tuple[str, object]]:
        return [(name, getattr(self, name)) for name, _ in _FIELD_TYPES]


_FIELD_TYPES: tuple[tuple[str, type], ...] = (
    ("n", int),
    ("challenger_mean", float),
    ("champion_mean", float),
    ("gain", float),
    ("lower", float),
    ("upper", float),
    ("confidence", float),
    ("method", str),
    ("resamples", int),
    ("seed", int),
    ("sample_ids_sha256", str),
)


def sample_ids_sha256(ids: Iterable[str]) -> str:
    """sha256 (hex) of the set of sample ids, independent of their order and repetition: the UTF-8
    JSON array of the sorted distinct ids, e.g. ``["a","b"]`` (unambiguous whatever the ids hold)."""
    distinct = set(ids)
    for sample_id in distinct:
        if not isinstance(sample_id, str):
            raise ConfigError(f"sample id {sample_id!r} is not a string; pass the samples' string ids")
    ordered = sorted(distinct)
    payload = json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def compare_paired(
    challenger: Mapping[str, float],
    champion: Mapping[str, float],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Compare per-sample scores (sample id -> score in [0, 1]) of challenger and champion on the
    same samples: the mean paired difference and its paired-bootstrap percentile interval at
    ``confidence`` (the method and why: this module's docstring). Deterministic in its inputs and
    ``seed``. Refuses (``ConfigError``) different id sets, no samples, scores that are not finite
    numbers in [0, 1], ``confidence`` outside (0, 1) and fewer than 1000 resamples."""
    _check_settings(confidence, resamples, seed)
    ids = _same_ids(challenger, champion, where="")
    mine, theirs = _scores(challenger, ids, "challenger"), _scores(champion, ids, "champion")
    return _compare([(mine, theirs)], ids, confidence, resamples, seed, METHOD)


def compare_meta_agents(
    challenger: Mapping[str, Mapping[str, float]],
    champion: Mapping[str, Mapping[str, float]],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Compare two meta-agents by the held-out test scores of the workflows each wrote: ``task ->
    (sample id -> score)``. Both must cover the same tasks and, per task, the same samples. The
    paired differences of all tasks are pooled (ids ``<task>/<id>``, which the sample-id hash
    covers): the gain is the mean over all samples, and the interval comes from a bootstrap that
    resamples within each task. Decide with :func:`decide`, the same rule as for workflows."""
    _check_settings(confidence, resamples, seed)
    for task in [*challenger, *champion]:
        if not isinstance(task, str) or not task or TASK_SEPARATOR in task:
            raise ConfigError(
                f"task name {task!r} must be a non-empty string without {TASK_SEPARATOR!r}; "
                "key the results by the task's name (e.g. gsm8k)"
            )
    only_new = sorted(set(challenger) - set(champion))
    only_old = sorted(set(champion) - set(challenger))
    if only_new or only_old:
        raise ConfigError(
            f"the meta-agents were benchmarked on different tasks (only the challenger: "
            f"{', '.join(only_new) or 'none'}; only the champion: {', '.join(only_old) or 'none'}); "
            "benchmark both on the same tasks and test samples"
        )
    if not challenger:
        raise ConfigError("no tasks to compare; benchmark both meta-agents on at least one task")
    strata = []
    pooled: list[str] = []
    for task in sorted(challenger):
        ids = _same_ids(challenger[task], champion[task], where=f" on task {task}")
        strata.append(
            (
                _scores(challenger[task], ids, f"challenger's {task}"),
                _scores(champion[task], ids, f"champion's {task}"),
            )
        )
        pooled.extend(f"{task}{TASK_SEPARATOR}{sample_id}" for sample_id in ids)
    return _compare(strata, pooled, confidence, resamples, seed, METHOD_STRATIFIED)


def decide(comparison: PairedComparison, margin: float = 0.0) -> bool:
    """The promotion rule: promote only when the lower confidence bound of the gain is strictly
    greater than ``margin`` (a gain in score units: 0.01 is one percentage point). With a margin
    >= 0 a tie never promotes, nor does a gain the interval cannot tell from noise; a negative
    margin accepts a challenger that is at worst that much worse (e.g. a cheaper workflow)."""
    if not isinstance(margin, Real) or not math.isfinite(margin) or not -1.0 < margin < 1.0:
        raise ConfigError(f"margin must be a number in (-1, 1), got {margin!r}; e.g. 0 or 0.01 (one point)")
    return comparison.lower > margin


def _check_settings(confidence: float, resamples: int, seed: int) -> None:
    if not isinstance(confidence, Real) or not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}; e.g. 0.95")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < MIN_RESAMPLES:
        raise ConfigError(
            f"resamples must be an integer of at least {MIN_RESAMPLES}, got {resamples!r}; the default is 10000"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}; e.g. 0")


def _same_ids(challenger: Mapping[str, float], champion: Mapping[str, float], *, where: str) -> list[str]:
    only_new = set(challenger) - set(champion)
    only_old = set(champion) - set(challenger)
    if only_new or only_old:
        examples = ", ".join(repr(i) for i in sorted(map(str, only_new | only_old))[:3])
        raise ConfigError(
            f"challenger and champion were scored on different samples{where}: {len(only_new)} ids only "
            f"in the challenger's results, {len(only_old)} only in the champion's (e.g. {examples}); "
            "score both on the same test samples"
        )
    if not challenger:
        raise ConfigError(
            f"no samples to compare{where}; score both on the same non-empty set of test samples"
        )
    for sample_id in challenger:
        if not isinstance(sample_id, str):
            raise ConfigError(f"sample id {sample_id!r} is not a string; key the scores by the samples' ids")
    return sorted(challenger)


def _scores(scores: Mapping[str, float], ids: list[str], whose: str) -> list[float]:
    values = []
    for sample_id in ids:
        value = scores[sample_id]
        if not isinstance(value, Real) or not 0.0 <= value <= 1.0:  # NaN fails both comparisons
            raise ConfigError(
                f"the {whose} score of sample {sample_id!r} is {value!r}; per-sample scores must be "
                "numbers in [0, 1] (a failed sample scores 0)"
            )
        values.append(float(value))
    return values


def _compare(
    strata: list[tuple[list[float], list[float]]],
    ids: list[str],
    confidence: float,
    resamples: int,
    seed: int,
    method: str,
) -> PairedComparison:
    import numpy as np

    n = sum(len(mine) for mine, _ in strata)
    challenger_mean = math.fsum(s for mine, _ in strata for s in mine) / n
    champion_mean = math.fsum(s for _, theirs in strata for s in theirs) / n
    differences = [np.asarray(mine) - np.asarray(theirs) for mine, theirs in strata]
    gain = math.fsum(float(d) for diff in differences for d in diff) / n
    means = _bootstrap_means(differences, resamples, seed)
    alpha = 1.0 - float(confidence)
    lower, upper = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return PairedComparison(
        n=n,
        challenger_mean=challenger_mean,
        champion_mean=champion_mean,
        gain=gain,
        lower=float(lower),
        upper=float(upper),
        confidence=float(confidence),
        method=method,
        resamples=resamples,
        seed=seed,
        sample_ids_sha256=sample_ids_sha256(ids),
    )


def _bootstrap_means(strata: list[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    """Mean difference of each resample: every stratum (task) resampled with replacement to its own
    size, strata in the order given, each stratum's draws in one stream (chunking changes nothing)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    total = sum(len(stratum) for stratum in strata)
    sums = np.zeros(resamples)
    for stratum in strata:
        size = len(stratum)
        chunk = max(1, _CHUNK_ELEMENTS // size)
        for start in range(0, resamples, chunk):
            count = min(chunk, resamples - start)
            sums[start : start + count] += stratum[rng.integers(0, size, size=(count, size))].sum(axis=1)
    return sums / total
