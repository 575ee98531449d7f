"""Rewards of the W4S decision process (RLAO).

``discrete`` (the paper's rule, the default): 1 when the candidate's validation accuracy beats the
best accuracy seen so far, 0.5 when it beats the previous turn's, else 0; minus 0.1 when the
accuracy is below 0.3. ``continuous``: the improvement over the best so far (negative when worse),
with the same low-accuracy penalty. The RWR weight of a reward is exp(reward / T), T = 0.4.
"""

from __future__ import annotations

REWARD_KINDS = ("discrete", "continuous")
LOW_ACCURACY = 0.3
PENALTY = 0.1


def reward(score: float | None, best_so_far: float, previous_turn: float, kind: str = "discrete") -> float:
    """The reward of a candidate with validation ``score`` (None: it never produced a workflow)."""
    if kind not in REWARD_KINDS:
        raise ValueError(f"unknown reward kind {kind!r}; use one of {', '.join(REWARD_KINDS)}")
    value = 0.0 if score is None else score
    if kind == "discrete":
        if value > best_so_far:
            base = 1.0
        elif value > previous_turn:
            base = 0.5
        else:
            base = 0.0
    else:
        base = value - best_so_far
    if value < LOW_ACCURACY:
        base -= PENALTY
    return round(base, 6)
