"""The turn loop: sample m candidate workflows, repair, evaluate on validation, reward, advance.

Every candidate, failed ones included, becomes a trajectory record. Within a turn, candidates are
first staged (``.turn-staging.jsonl``, fsynced one by one, so a crash loses at most the candidate
in flight); when the turn is complete they are appended to ``trajectories.jsonl`` together, with
the ``selected`` flag of the one that advances the state. Feedback and selection use the validation
split only; the test split is scored once, for the best workflow, at the very end.

A record is exactly what happened: a candidate whose evaluation did not complete (the budget ran
out before or while its samples ran) is never staged, so no deflated score or reward becomes
training data; the run stops, says why, and a resume with more budget redoes that candidate. The
run's spend, its defining settings and the turn's replies live in the run folder
(:mod:`w4s.optimizer.run_folder`), so a resume continues the same run within the same budget.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from w4s import workflows
from w4s.callbacks import CallbackHandler, TurnSummary
from w4s.config import Config, option, positive
from w4s.errors import BudgetExceeded, ConfigError
from w4s.evaluation import EvaluationConfig, EvaluationResult, evaluate, select
from w4s.feedback import build_feedback
from w4s.llm.gateway import Gateway
from w4s.llm.limits import Budget
from w4s.llm.pricing import require_prices
from w4s.optimizer import prompts
from w4s.optimizer.extraction import extract_workflow, static_check
from w4s.optimizer.report import can_plot, turn_records, write_report
from w4s.optimizer.result import BestWorkflow, OptimizeResult, RunPaths
from w4s.optimizer.rewards import REWARD_KINDS, reward
from w4s.optimizer.run_folder import RUN, RunFolder, atomic_write
from w4s.optimizer.trajectory import TrajectoryStore, record_key
from w4s.sandbox.config import SandboxConfig
from w4s.sandbox.runner import RunnerFactory
from w4s.sandbox.workflow import WorkflowSandbox
from w4s.tasks.base import Sample, Task

log = logging.getLogger(__name__)

TRAJECTORIES = "trajectories.jsonl"
STAGING = ".turn-staging.jsonl"
BASELINES = "baselines.json"
BEST_WORKFLOW = "best_workflow.py"
TEST_EVALUATION = "test_evaluation.json"  # the best workflow's per-sample test results (for promotion)


def _how_to_evaluate(evaluation: EvaluationConfig | None) -> EvaluationConfig:
    """The optimizer chooses the split, subset and budget of its evaluations; only how they run
    (``concurrency``) comes from the caller. A setting it would ignore is refused instead."""
    evaluation = evaluation or EvaluationConfig()
    defaults = EvaluationConfig()
    ignored = [
        name
        for name in ("split", "limit", "seed", "budget_usd", "budget_calls", "budget_tokens")
        if getattr(evaluation, name) != getattr(defaults, name)
    ]
    if ignored:
        raise ConfigError(
            f"optimize sets the evaluations' {', '.join(ignored)} itself; use validation_limit, test_limit, "
            "seed and budget_usd of the optimize settings"
        )
    return evaluation


@dataclass
class OptimizeConfig(Config):
    """How an optimization run goes (the task it optimizes for is given beside it)."""

    turns: int = option(10, "turns of the meta-agent", positive)
    candidates: int = option(5, "candidate workflows sampled per turn (m)", positive)
    temperature: float = option(
        0.5, "meta-agent sampling temperature", lambda v: 0 <= v <= 2, "between 0 and 2"
    )
    context_turns: int = option(
        2, "earlier turns kept in the meta-agent's context (k)", lambda v: v >= 0, "0 or more"
    )
    repairs: int = option(3, "repair attempts per candidate from its error", lambda v: v >= 0, "0 or more")
    reward: str = option(
        "discrete",
        "reward rule: discrete (paper) or continuous",
        lambda v: v in REWARD_KINDS,
        "use discrete or continuous",
    )
    validation_limit: int | None = option(None, "validation samples per evaluation (seeded subset)", positive)
    test_limit: int | None = option(
        None, "test samples for the final score (seeded subset; default all)", positive
    )
    seed: int = option(0, "seed of the validation subset and the feedback cases")
    episode: int = option(0, "episode index written into the records", lambda v: v >= 0, "0 or more")
    budget_usd: float | None = option(
        None,
        "the run's budget for executor and meta-agent together, across resumes: a request is sent only if "
        "its worst case fits, and the run stops cleanly (exit 4) when none does",
        positive,
    )
    meta_max_tokens: int = option(4096, "longest meta-agent reply", positive)
    baselines: list | None = option(
        None,
        "shipped example workflows scored as baselines and shown to the meta-agent, by name (e.g. [cot, pot]); "
        "None: all of the task's family",
        lambda v: v is None or (bool(v) and all(isinstance(name, str) for name in v)),
        "a non-empty list of workflow names",
    )


@dataclass
class TurnState:
    """What the next turn's prompt is built from; derived from the committed records."""

    best_score: float
    previous_score: float
    history: list[dict] = field(default_factory=list)  # selected records, oldest first


class _Stopped(Exception):
    """The budget cannot cover what the run needs next: unwind to :meth:`Optimizer.run` and report."""


def derive_seed(*parts: int) -> int:
    """A sampling seed per (seed, episode, turn, candidate, attempt): different where the samples must
    differ (another episode, turn or repair), the same on a rerun of the same step."""
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


class Optimizer:
    """One episode of the W4S decision process for ``task``, in the run folder ``out_dir``.
    ``meta`` and ``executor`` are open gateways; ``evaluation`` says how evaluations run (concurrency)."""

    def __init__(
        self,
        task: Task,
        cfg: OptimizeConfig,
        meta: Gateway,
        executor: Gateway,
        out_dir: str | os.PathLike,
        *,
        data_dir: str | os.PathLike | None = None,
        sandbox: SandboxConfig | None = None,
        evaluation: EvaluationConfig | None = None,
        resume: bool = False,
        callbacks: CallbackHandler | None = None,
        runner: RunnerFactory = WorkflowSandbox,
        lineage: dict | None = None,
    ):
        self.cfg = cfg
        self.lineage = lineage or {}  # which registered meta-agent version writes (report.json's extra)
        self.meta = meta
        self.executor = executor
        self.out = Path(out_dir).expanduser().resolve()
        self.data_dir = data_dir
        self.sandbox = sandbox or SandboxConfig()
        self.evaluation = _how_to_evaluate(evaluation)
        self.runner = runner
        self.task = task
        self.callbacks = callbacks or CallbackHandler()
        self.out.mkdir(parents=True, exist_ok=True)
        existing = self.out / TRAJECTORIES
        if existing.exists() and existing.stat().st_size > 0 and not resume:
            raise ConfigError(
                f"{self.out} already holds a run; pass --resume to continue it, or choose another --out"
            )
        self.validation = select(self.task.load("validation", data_dir), cfg.validation_limit, cfg.seed)
        if (
            resume
            and not (self.out / RUN).exists()
            and (existing.exists() or (self.out / BASELINES).exists())
        ):
            raise ConfigError(
                f"{self.out} has no run.json: it was not made by this w4s optimize; choose another --out"
            )
        self.folder = RunFolder(self.out, self.identity(), resume)
        self.store = TrajectoryStore(existing, cfg.episode)
        self.staging = TrajectoryStore(self.out / STAGING, cfg.episode)
        self.stopped: str | None = None
        self.sandbox_isolation: dict = {}  # the isolation the evaluations ran under (in the report)

    def identity(self) -> dict:
        """The settings that define this run: a resume must not change them (see RunFolder)."""
        return {
            "task": self.task.name,
            "episode": self.cfg.episode,
            "seed": self.cfg.seed,
            "validation_limit": self.cfg.validation_limit,
            "candidates": self.cfg.candidates,
            "repairs": self.cfg.repairs,
            "reward": self.cfg.reward,
            "context_turns": self.cfg.context_turns,
            "executor": [self.executor.model, self.executor.cfg.model_revision],
            "meta_agent": [self.meta.model, self.meta.cfg.model_revision],
            "sample_timeout_s": self.sandbox.timeout_s,
        }

    # --- spend and budget --------------------------------------------------------------------------
    def spend(self) -> dict:
        """The run's spend so far, earlier processes included."""
        return self.folder.total(self.executor.usage, self.meta.usage)

    def _save_spend(self) -> None:
        self.folder.save_spend(self.executor.usage, self.meta.usage)

    def _remaining_usd(self) -> float | None:
        if self.cfg.budget_usd is None:
            return None
        spend = self.spend()
        return self.cfg.budget_usd - spend["executor"].cost_usd - spend["meta"].cost_usd

    def _check_budget(self) -> None:
        remaining = self._remaining_usd()
        if remaining is not None and remaining <= 0:
            self._stop("the run's budget is spent")

    def _stop(self, reason: str) -> None:
        """Stop the run: ``reason`` from a budget of this process is restated as the run's own."""
        remaining = self._remaining_usd()
        if remaining is not None:
            reason = (
                f"the run's budget of ${self.cfg.budget_usd:g} has ${max(0.0, remaining):.6f} left, less than "
                "what comes next may cost"
            )
        self.stopped = reason
        raise _Stopped

    # --- evaluation and the meta-agent -------------------------------------------------------------
    async def _evaluate(
        self, source: str, samples: list[Sample], purpose: str, split: str = "validation"
    ) -> EvaluationResult:
        """A complete evaluation, or :class:`_Stopped`: an incomplete one is never used."""
        self._check_budget()
        cfg = replace(self.evaluation, split=split, budget_usd=self._remaining_usd())
        try:
            result = await evaluate(
                source,
                self.task,
                self.executor,
                cfg,
                sandbox=self.sandbox,
                samples=samples,
                workflow_label=purpose,
                callbacks=self.callbacks,
                purpose=purpose,
                runner=self.runner,
            )
        finally:
            self._save_spend()
        self.sandbox_isolation = result.sandbox
        if not result.complete:
            self._stop(result.budget_exhausted or "the budget is spent")
        return result

    async def _ask_meta(self, messages: list[dict], n: int, seed: int) -> list[str]:
        """The meta-agent's replies, within what is left of the run's budget."""
        self._check_budget()
        try:
            return await self.meta.chat(
                messages,
                n=n,
                temperature=self.cfg.temperature,
                max_tokens=self.cfg.meta_max_tokens,
                seed=seed,
                budget=Budget(max_usd=self._remaining_usd()),
            )
        except BudgetExceeded as exc:
            self._stop(str(exc))
        finally:
            self._save_spend()

    # --- baselines ---------------------------------------------------------------------------------
    async def baselines(self) -> dict[str, dict]:
        path = self.out / BASELINES
        if path.exists():
            saved = _read_baselines(path)
            log.info("baselines: %d scored in an earlier run (%s)", len(saved), path.name)
            return saved
        scores = {}
        examples = workflows.examples(self.task.family)
        if self.cfg.baselines is not None:
            unknown = [name for name in self.cfg.baselines if name not in examples]
            if unknown:
                raise ConfigError(
                    f"baselines {unknown} are not shipped workflows of {self.task.family}; "
                    f"use some of {', '.join(examples)}"
                )
            examples = {name: examples[name] for name in self.cfg.baselines}
        log.info(
            "baselines: evaluating %d example workflows on %d validation samples",
            len(examples),
            len(self.validation),
        )
        for name, source in examples.items():
            result = await self._evaluate(source, self.validation, f"baseline:{name}")
            scores[name] = {"valid_score": result.score, "source": source, "usage": result.usage.to_dict()}
            log.info("baseline %s: validation %.3f", name, result.score)
        atomic_write(path, json.dumps(scores, indent=2))
        return scores

    # --- state -------------------------------------------------------------------------------------
    def state(self, baselines: dict[str, dict]) -> TurnState:
        best = max((b["valid_score"] for b in baselines.values()), default=0.0)
        state = TurnState(best_score=best, previous_score=best)
        for turn in sorted({r["turn"] for r in self.store if r["episode"] == self.cfg.episode}):
            selected = self.store.selected(self.cfg.episode, turn)
            if selected is None:
                continue
            state.history.append(selected)
            state.previous_score = selected["valid_score"] or 0.0
            state.best_score = max(state.best_score, state.previous_score)
        return state

    def messages(self, baselines: dict[str, dict], state: TurnState) -> list[dict]:
        examples = [(name, b["source"], b["valid_score"]) for name, b in baselines.items()]
        messages = [
            {"role": "system", "content": prompts.system()},
            {"role": "user", "content": prompts.initial(self.task.description, examples)},
        ]
        if self.cfg.context_turns:
            for record in state.history[-self.cfg.context_turns :]:
                messages.append({"role": "assistant", "content": record["final_reply"]})
                messages.append(
                    {"role": "user", "content": prompts.feedback(record["feedback"], record["best_after"])}
                )
        return messages

    # --- one candidate -----------------------------------------------------------------------------
    async def candidate(
        self, turn: int, index: int, prompt: list[dict], reply: str, state: TurnState
    ) -> dict:
        record: dict = {
            "episode": self.cfg.episode,
            "turn": turn,
            "candidate": index,
            "prompt_messages": prompt,
            "reply": reply,
            "final_reply": reply,
            "repairs": [],
            "workflow": None,
            "valid_score": None,
            "reward": None,
            "selected": False,
            "error": None,
            "feedback": None,
            "usage": {},
        }
        executor_before = self.executor.usage.to_dict()
        meta_before = self.meta.usage.to_dict()
        started = time.monotonic()
        name = f"turn {turn} candidate {index}"
        current_reply = reply
        for attempt in range(self.cfg.repairs + 1):
            workflow = extract_workflow(current_reply)
            error, line = None, None
            if workflow is None:
                error = "no ```python block defining solver(agent, task)"
                ask = prompts.no_code(self.task.description)
            else:
                error = static_check(workflow)
                if error is None:
                    log.info(
                        "%s: workflow extracted%s; self-check on 1 validation sample",
                        name,
                        f" from repair {attempt}" if attempt else "",
                    )
                    check = await self._evaluate(workflow, self.validation[:1], "self-check")
                    sample = check.samples[0]
                    if sample.error is not None and sample.answer is None:
                        error, line = sample.error, sample.error_line
                ask = prompts.repair(self.task.description, workflow, error or "", line)
            if error is None:
                record["workflow"] = workflow
                break
            record["error"] = error
            if attempt == self.cfg.repairs:
                break
            log.info(
                "%s: %s; asking the meta-agent for repair %d of %d",
                name,
                _brief(error),
                attempt + 1,
                self.cfg.repairs,
            )
            repaired = await self._ask_meta(
                [{"role": "system", "content": prompts.system()}, {"role": "user", "content": ask}],
                1,
                derive_seed(self.cfg.seed, self.cfg.episode, turn, index, attempt + 1),
            )
            record["repairs"].append({"error": error, "line": line, "reply": repaired[0]})
            current_reply = repaired[0]
            record["final_reply"] = current_reply
        if record["workflow"] is not None:
            record["error"] = None
            log.info("%s: evaluating on %d validation samples", name, len(self.validation))
            result = await self._evaluate(record["workflow"], self.validation, "validation")
            record["valid_score"] = result.score
            record["feedback"] = build_feedback(result, self.validation, seed=self.cfg.seed + turn)
        record["reward"] = reward(
            record["valid_score"], state.best_score, state.previous_score, self.cfg.reward
        )
        record["usage"] = {
            "executor": _delta(executor_before, self.executor.usage.to_dict()),
            "meta": _delta(meta_before, self.meta.usage.to_dict()),
        }
        log.info(
            "%s done: %s, reward %+.2f, %d repairs, tokens: meta %d, executor %d; %.1f s",
            name,
            "failed" if record["valid_score"] is None else f"validation {record['valid_score']:.3f}",
            record["reward"],
            len(record["repairs"]),
            _tokens(record["usage"]["meta"]),
            _tokens(record["usage"]["executor"]),
            time.monotonic() - started,
        )
        self.callbacks.emit("on_candidate_end", copy.deepcopy(record))
        return record

    # --- the run -----------------------------------------------------------------------------------
    async def run(self) -> OptimizeResult:
        """Run (or resume) the episode; returns its result (also written as report.json)."""
        require_prices(self.cfg.budget_usd, executor=self.executor, meta=self.meta)
        baselines: dict[str, dict] = {}
        saver = asyncio.create_task(self._save_spend_every_second())
        try:
            baselines = await self.baselines()
            for turn in range(1, self.cfg.turns + 1):
                if (self.cfg.episode, turn, self.cfg.candidates - 1) in self.store:
                    log.info("turn %d: committed in an earlier run", turn)
                    continue
                await self.turn(turn, baselines)
        except _Stopped:
            log.warning("stopping: %s", self.stopped)
        try:
            return await self.finish(baselines)
        finally:
            saver.cancel()

    async def _save_spend_every_second(self) -> None:
        """While samples run, the spend so far reaches spend.json: a kill loses at most a second of it."""
        while True:
            await asyncio.sleep(1.0)
            self._save_spend()

    async def turn(self, turn: int, baselines: dict[str, dict]) -> None:
        state = self.state(baselines)
        prompt = self.messages(baselines, state)
        staged = {
            r["candidate"]: r for r in self.staging if r["episode"] == self.cfg.episode and r["turn"] == turn
        }
        for index in range(self.cfg.candidates):
            committed = self.store.get((self.cfg.episode, turn, index))
            if committed is not None:  # the turn was partly committed (its commit was cut short)
                staged.setdefault(index, committed)
        if staged:
            log.info(
                "turn %d: candidates %s evaluated in an earlier run",
                turn,
                ", ".join(map(str, sorted(staged))),
            )
        if len(staged) < self.cfg.candidates:
            replies = self.folder.replies(self.cfg.episode, turn)
            if replies is None or len(replies) != self.cfg.candidates:
                seed = derive_seed(self.cfg.seed, self.cfg.episode, turn)
                log.info(
                    "turn %d: asking the meta-agent %s for %d candidates (at most %d tokens each)",
                    turn,
                    self.meta.model,
                    self.cfg.candidates,
                    self.cfg.meta_max_tokens,
                )
                before, started = self.meta.usage.completion_tokens, time.monotonic()
                replies = await self._ask_meta(prompt, self.cfg.candidates, seed)
                self.folder.save_replies(self.cfg.episode, turn, replies)
                tokens, seconds = self.meta.usage.completion_tokens - before, time.monotonic() - started
                log.info(
                    "turn %d: the meta-agent wrote %d candidates, %d tokens in %.1f s (%.1f tokens/s)",
                    turn,
                    len(replies),
                    tokens,
                    seconds,
                    tokens / seconds if seconds > 0 else 0.0,
                )
            else:
                log.info("turn %d: the meta-agent's %d replies saved by an earlier run", turn, len(replies))
            for index, reply in enumerate(replies):
                if index not in staged:
                    staged[index] = await self.candidate(turn, index, prompt, reply, state)
                    self.staging.append(staged[index])
        self.commit(turn, [staged[i] for i in range(self.cfg.candidates)], state)

    def commit(self, turn: int, records: list[dict], state: TurnState) -> None:
        """Append the turn's records with the selection. Records already in the store (a commit cut
        short) stay as written; a selection they carry is kept."""
        scored = [r for r in records if r["valid_score"] is not None]
        written = [r for r in records if record_key(r) in self.store]
        chosen = next((r for r in written if r["selected"]), None)
        if chosen is None and scored:
            chosen = max(scored, key=lambda r: (r["valid_score"], -r["candidate"]))
        best_after = max([state.best_score] + [r["valid_score"] for r in scored])
        for record in records:
            if record_key(record) in self.store:
                continue
            record["selected"] = record is chosen
            record["best_after"] = best_after
            self.store.append(record)
        self.staging.path.unlink(missing_ok=True)
        self.staging = TrajectoryStore(self.out / STAGING, self.cfg.episode)
        self.folder.clear_replies()
        self.callbacks.emit(
            "on_turn_end",
            TurnSummary(
                self.cfg.episode,
                turn,
                None if chosen is None else chosen["candidate"],
                best_after,
                tuple(r["valid_score"] for r in records),
                tuple(r["reward"] for r in records),
                sum(usage.cost_usd for usage in self.spend().values()),
            ),
        )

    async def finish(self, baselines: dict[str, dict]) -> OptimizeResult:
        """Score the best validated workflow once on test (when the budget allows) and write the report."""
        options = [
            {"name": f"baseline:{name}", "source": b["source"], "valid_score": b["valid_score"], "turn": 0}
            for name, b in baselines.items()
        ]
        options += [
            {
                "name": f"turn {r['turn']} candidate {r['candidate']}",
                "source": r["workflow"],
                "valid_score": r["valid_score"],
                "turn": r["turn"],
            }
            for r in self.store
            if r["workflow"] is not None and r["valid_score"] is not None
        ]
        best = max(options, key=lambda o: (o["valid_score"], -o["turn"])) if options else None
        test_result = None
        if best is not None:
            atomic_write(self.out / BEST_WORKFLOW, best["source"])
            if self.stopped is None:
                test_samples = select(
                    self.task.load("test", self.data_dir), self.cfg.test_limit, self.cfg.seed
                )
                log.info(
                    "test: scoring the best workflow, %s (validation %.3f), on %d test samples",
                    best["name"],
                    best["valid_score"],
                    len(test_samples),
                )
                try:
                    test_result = await self._evaluate(best["source"], test_samples, "test", split="test")
                except _Stopped:
                    log.warning("the test split was not scored: %s", self.stopped)
                else:
                    atomic_write(
                        self.out / TEST_EVALUATION, json.dumps(test_result.to_dict(), indent=1) + "\n"
                    )
        result = self.result(baselines, best, test_result)
        write_report(result)
        return result

    def result(
        self, baselines: dict[str, dict], best: dict | None, test: EvaluationResult | None
    ) -> OptimizeResult:
        return OptimizeResult(
            task=self.task.name,
            episode=self.cfg.episode,
            meta_model=self.meta.model,
            executor=self.executor.model,
            config=self.cfg.to_dict(),
            best=None
            if best is None
            else BestWorkflow(
                best["name"],
                best["source"],
                best["valid_score"],
                None if test is None else test.score,
                None if test is None else len(test.samples),
            ),
            baselines={name: b["valid_score"] for name, b in baselines.items()},
            turns=turn_records([r for r in self.store if r["episode"] == self.cfg.episode]),
            usage={side: usage.to_dict() for side, usage in self.spend().items()},  # all resumes
            sandbox=self.sandbox_isolation,
            stopped=self.stopped,
            paths=RunPaths(
                out_dir=str(self.out),
                trajectories=str(self.out / TRAJECTORIES),
                best_workflow=None if best is None else str(self.out / BEST_WORKFLOW),
                report_json=str(self.out / "report.json"),
                report_md=str(self.out / "report.md"),
                curve_png=str(self.out / "curve.png") if can_plot() else None,
                test_evaluation=None if test is None else str(self.out / TEST_EVALUATION),
            ),
            extra={"meta_agent": self.lineage} if self.lineage else {},
        )


def _read_baselines(path: Path) -> dict[str, dict]:
    """The baselines of an earlier run of this folder; damage is one line, never a traceback."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or not all(
            isinstance(b, dict)
            and isinstance(b.get("source"), str)
            and type(b.get("valid_score")) in (int, float)
            and 0 <= b["valid_score"] <= 1
            for b in saved.values()
        ):
            raise ValueError("not a baselines record")
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} is damaged ({type(exc).__name__}); delete it to evaluate the baselines again"
        ) from None
    return saved


def _brief(error: str) -> str:
    """An error's first line, short enough for a log line."""
    first = error.strip().splitlines()[0] if error.strip() else error
    return first if len(first) <= 100 else first[:97] + "..."


def _tokens(usage: dict) -> int:
    return usage["prompt_tokens"] + usage["completion_tokens"]


def _delta(before: dict, after: dict) -> dict:
    return {
        k: round(after[k] - before[k], 6) if isinstance(after[k], float) else after[k] - before[k]
        for k in after
    }
