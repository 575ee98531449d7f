"""The reward-weighted regression loss, vectorised over the batch.

For example i with completion tokens c_i and weight w_i = exp(r_i / T):

    l_i  = mean over t in c_i of  -log p(token_t | tokens_<t)        (per-sequence token mean)
    loss = (1 / N) * sum_i  w_i * l_i                                 (mean over the batch)

Why per sequence: each candidate is one action of the decision process, so each counts once,
whatever the length of its reply; a per-token mean would let long replies dominate the update.
Why 1/N and not 1/sum(w): the absolute weights are the point of RWR; normalising by their sum would
make a batch of poor candidates pull as hard as a batch of good ones. (Gradient accumulation then
averages micro-batches, which keeps the same expectation.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def per_sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL of the labelled (completion) tokens of each sequence, from full-length logits: [B]
    (the reference-style trainer of perf/train_speed.py computes its loss with it)."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    return -completion_log_probs(logits[:, :-1, :], targets).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def completion_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions whose next token carries loss in any row (the only logits worth computing)."""
    return (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(1)


def sequence_ids(labels: torch.Tensor, position_ids: torch.Tensor | None, padding_free: bool) -> torch.Tensor:
    """The example each token belongs to, [B, T]: the row when padded; in a padding-free row (the batch's
    examples concatenated), a new example starts wherever the position ids restart at 0."""
    rows, width = labels.shape
    if not padding_free:
        return torch.arange(rows, device=labels.device)[:, None].expand(rows, width)
    return (position_ids == 0).long().cumsum(dim=1) - 1


def weighted_sequence_loss(
    token_logp: torch.Tensor, mask: torch.Tensor, sequence: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The RWR loss from per-token log-probabilities of the labelled tokens.

    ``token_logp``, ``mask`` (token carries loss) and ``sequence`` (its example's index) have one shape,
    whatever the layout (padded rows, one padding-free row, or only the completion positions): each
    example's mean NLL over its own tokens, times its weight, averaged over the examples."""
    count = weights.numel()
    index = sequence[mask]
    nll = torch.zeros(count, device=token_logp.device, dtype=torch.float32)
    nll = nll.index_add(0, index, -token_logp[mask].float())
    tokens = torch.zeros(count, device=token_logp.device, dtype=torch.float32)
    tokens = tokens.index_add(0, index, torch.ones_like(index, dtype=torch.float32))
    return (nll / tokens.clamp(min=1) * weights.to(token_logp.device, torch.float32)).mean()


def completion_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for logits [B, P, V] and targets [B, P] (IGNORE positions give 0), in float32."""
    logp = -F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.clamp(min=0).reshape(-1), reduction="none"
    ).view(targets.shape)
    return logp * (targets != IGNORE)
