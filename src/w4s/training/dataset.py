"""Trajectories -> reward-weighted chat examples, tokenised with the model's own chat template.

An example is the prompt the meta-agent saw for a candidate (system prompt, initial prompt, and the
selected actions and observations of the earlier turns in its context window: the record's
``prompt_messages``) and, as completion, the candidate's reply. Its weight is exp(reward / T).
Only completion tokens carry loss (labels -100 elsewhere).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from w4s.errors import ConfigError
from w4s.training.config import TrainConfig

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class Example:
    messages: list[dict]
    completion: str
    reward: float
    weight: float
    source: str


REWARD_LIMIT = 10.0  # w4s optimize writes rewards in [-1.1, 1]; beyond this a record is not one of ours
_FIELDS = ("episode", "turn", "prompt_messages", "reply", "reward")
_NOT_OURS = "is this a w4s trajectories file?"
# The trajectory file a record came from: read_records adds it (a merged file keeps the original's), so
# that episodes of different files (tasks, runs) with the same number stay apart.
SOURCE = "source"
FILTERS = ("only_success_episodes", "drop_failed", "turns")


def read_records(paths: list[str | Path]) -> list[dict]:
    """The records of trajectory files, each checked; the first bad one is a ConfigError naming its
    file and line."""
    records = []
    for path in paths:
        path = Path(path).expanduser().absolute()
        if not path.is_file():
            raise ConfigError(f"trajectory file {path} does not exist")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"trajectory file {path} cannot be read ({type(exc).__name__}: {exc.strerror or exc}); "
                "check its permissions"
            ) from None
        for number, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"{where} is not UTF-8 text; {_NOT_OURS}") from None
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                raise ConfigError(f"{where} is not a JSON line; {_NOT_OURS}") from None
            check_record(record, where)
            record.setdefault(SOURCE, str(path))
            records.append(record)
    return records


def check_record(record: object, where: str) -> None:
    """Refuse a record ``build_examples`` cannot use, with ``where`` (file:line) and what is wrong."""
    problem = _record_problem(record)
    if problem is not None:
        raise ConfigError(
            f"{where} {problem}; fix or remove that record (w4s optimize writes the trajectories file)"
        )


def _record_problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return f"holds {_shown(record)}, not a trajectory record (a JSON object)"
    for name in _FIELDS:
        if name not in record:
            return f"lacks {name!r}"
    for name in ("episode", "turn"):
        if type(record[name]) is not int:
            return f"has {name} {_shown(record[name])}, not an integer"
    messages = record["prompt_messages"]
    if not isinstance(messages, list) or not messages:
        return f'has prompt_messages {_shown(messages)}, not a list of {{"role", "content"}} messages'
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            return (
                f"has prompt_messages[{index}] {_shown(message)}, not a message with string role and content"
            )
    if not isinstance(record["reply"], str):
        return f"has reply {_shown(record['reply'])}, not a string"
    reward = record["reward"]
    # NaN and infinities fail the range test too; ints are compared exactly, never converted.
    if type(reward) not in (int, float) or not -REWARD_LIMIT <= reward <= REWARD_LIMIT:
        return (
            f"has reward {_shown(reward)}, not a finite number in [-{REWARD_LIMIT:g}, {REWARD_LIMIT:g}] "
            "(w4s optimize writes -1.1 to 1)"
        )
    return None


def _shown(value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return "a value that is not JSON"
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Filtered:
    """The records the filters keep, and how many each filter dropped (in the order they apply)."""

    kept: list[dict]
    dropped: dict[str, int]


def episode_key(record: dict) -> tuple:
    """An episode: its number within its file (records built in memory have no file: number alone)."""
    return (record.get(SOURCE), record["episode"])


def filter_records(records: list[dict], cfg) -> Filtered:
    """Apply the filters of ``cfg`` (a TrainConfig, or any config with ``only_success_episodes``,
    ``drop_failed`` and ``turns``): episodes without a reward >= 1, candidates that never produced a
    workflow, turns not listed. The records must be checked ones (``check_record``)."""
    kept = list(records)
    dropped = dict.fromkeys(FILTERS, 0)
    if cfg.only_success_episodes:
        good = {episode_key(r) for r in kept if r["reward"] >= 1.0}
        before = len(kept)
        kept = [r for r in kept if episode_key(r) in good]
        dropped["only_success_episodes"] = before - len(kept)
    if cfg.drop_failed:
        before = len(kept)
        kept = [r for r in kept if r.get("workflow")]
        dropped["drop_failed"] = before - len(kept)
    if cfg.turns is not None:
        turns = set(cfg.turns)
        before = len(kept)
        kept = [r for r in kept if r["turn"] in turns]
        dropped["turns"] = before - len(kept)
    return Filtered(kept, dropped)


def rwr_weight(reward: float, temperature: float) -> float:
    """The RWR weight of a reward: exp(reward / T)."""
    return math.exp(float(reward) / temperature)


def check_temperature(rewards, temperature: float) -> None:
    """Refuse a temperature at which exp(reward / T) overflows for some reward."""
    top = max(rewards, key=abs)
    if abs(top) / temperature > 700:  # exp() overflows near 709.8
        raise ConfigError(
            f"temperature={temperature:g} is too small for reward {top:g}: exp(reward / T) overflows; "
            "raise temperature (the paper uses 0.4)"
        )


def build_examples(records: list[dict], cfg: TrainConfig) -> list[Example]:
    if not records:
        raise ConfigError("the trajectory files hold no records; run `w4s optimize` first")
    for field in _FIELDS:
        if any(not isinstance(r, dict) or field not in r for r in records):
            raise ConfigError(
                f"some trajectory records lack {field!r}; they were not written by w4s optimize"
            )
    for index, record in enumerate(records, 1):
        check_record(record, f"trajectory record {index}")
    kept = filter_records(records, cfg).kept
    if not kept:
        raise ConfigError(
            "no trajectory records are left after the filters (only_success_episodes, drop_failed, turns)"
        )
    rewards = {float(r["reward"]) for r in kept}
    if len(rewards) == 1 and not cfg.allow_uniform_weights:
        raise ConfigError(
            f"every reward equals {rewards.pop()}: weighting cannot steer anything (RWR would be plain SFT); "
            "collect more turns, or set allow_uniform_weights"
        )
    check_temperature(rewards, cfg.temperature)
    return [
        Example(
            r["prompt_messages"],
            r["reply"],
            float(r["reward"]),
            rwr_weight(r["reward"], cfg.temperature),
            f"episode {r['episode']} turn {r['turn']} candidate {r.get('candidate')}",
        )
        for r in kept
    ]


def tokenize(examples: list[Example], tokenizer, cfg: TrainConfig) -> list[dict]:
    """input_ids, labels (completion only) and weight per example; no padding here.

    As TRL does for prompt-completion data: the prompt and the prompt followed by the completion are
    rendered through the model's chat template, and the completion is what follows their common prefix.
    So the completion ends with the template's own end of turn (``<|im_end|>``, ``<|eot_id|>``, ...),
    the token generation stops on. Only a template that closes the assistant turn with nothing gets the
    tokenizer's ``eos`` appended, so that the meta-agent still learns to stop.
    """
    rows, too_long = [], []
    for example in examples:
        ids, start = encode(tokenizer, example.messages, example.completion)
        if len(ids) > cfg.max_length:
            too_long.append((example.source, len(ids)))
            continue
        rows.append({"input_ids": ids, "labels": [IGNORE] * start + ids[start:], "weight": example.weight})
    if too_long and not cfg.drop_long:
        worst = max(too_long, key=lambda item: item[1])
        raise ConfigError(
            f"{len(too_long)} examples are longer than max_length={cfg.max_length} tokens (longest: {worst[0]}, "
            f"{worst[1]} tokens); raise max_length or set drop_long"
        )
    if not rows:
        raise ConfigError(f"every example is longer than max_length={cfg.max_length}; raise max_length")
    return rows


def encode(tokenizer, messages: list[dict], completion: str) -> tuple[list[int], int]:
    """Token ids of ``messages`` + the assistant's ``completion`` through the chat template, and where the
    completion starts in them."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the base model's tokenizer has no chat template; use an instruct (chat) model as the meta-agent"
        )
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": completion}], tokenize=False
    )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    start = _common_prefix(prompt_ids, ids)
    if start < len(prompt_ids):
        _warn_prefix_once(tokenizer.decode(prompt_ids[start:]))
    if tokenizer.eos_token_id is not None and not _closes_turn(tokenizer, full_text, completion, ids[start:]):
        ids = [*ids, tokenizer.eos_token_id]  # the template closes the turn with nothing: teach eos
    if start >= len(ids):
        raise ConfigError(
            "the chat template renders no completion tokens; check the base model's chat template"
        )
    return ids, start


def _closes_turn(tokenizer, full_text: str, completion: str, completion_ids: list[int]) -> bool:
    """Whether the template puts an end of turn after the completion (text after it, or, where the template
    rewrote the content, a special token among the completion's tokens)."""
    at = full_text.rfind(completion) if completion else -1
    if at >= 0:
        return bool(full_text[at + len(completion) :].strip())
    special = set(tokenizer.all_special_ids)
    return any(token in special for token in completion_ids)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


_warned_prefix = False


def _warn_prefix_once(tail: str) -> None:
    global _warned_prefix
    if not _warned_prefix:
        _warned_prefix = True
        log.warning(
            "the chat template renders the prompt differently once the reply follows it; the completion "
            "starts where they diverge (the prompt's %r is not trained as context)",
            tail[:80],
        )
