"""A local Hugging Face causal LM behind the gateway interface, generating in-process.

``local:PATH`` names a Hugging Face model folder or a ``.gguf`` file; ``local:NAME`` a model pulled
with ``w4s models pull NAME``. Concurrent requests with the same sampling parameters are batched
into one ``generate`` call (left padding), which is where a CPU or a GPU earns its throughput; a
request for ``n`` completions is ``n`` rows of that batch, and ``batch_size`` bounds the rows. The
model loads in the endpoint's ``local_dtype`` (``auto``: bfloat16 or float16 on a GPU, float32 on
the CPU). Loading and the model catalogue live in :mod:`w4s.llm.models`; this module needs the
``local`` extra.

A generation can take minutes on a CPU, so it reports itself in plain log lines (a pod has no
terminal): one at least every :data:`PROGRESS_INTERVAL_S` seconds while it runs, from a stopping
criterion that only checks the clock at each step, and one with the totals when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

from w4s.extras import require
from w4s.llm.backends import Completion
from w4s.llm.models import fingerprint, load, pick_dtype, resolve

log = logging.getLogger(__name__)

_BATCH_WINDOW_S = 0.01
PROGRESS_INTERVAL_S = 30.0  # the longest a generation runs without a log line (read at each generate)


@dataclass
class _Job:
    messages: list[dict]
    n: int
    future: asyncio.Future
    params: tuple = field(default=())


class LocalBackend:
    """``local:...`` generating in-process; ``dtype`` is one of :data:`w4s.llm.models.DTYPES`."""

    def __init__(self, model: str, batch_size: int = 8, dtype: str = "auto"):
        require("local", "torch", "transformers")
        self.model = model
        self.path = resolve(model)
        self.dtype = pick_dtype(dtype)
        # a model in another dtype answers differently: its cache entries are its own
        self.identity = f"local:{self.path}@{fingerprint(self.path)}:{self.dtype}"
        self.batch_size = batch_size
        self._loaded = None
        self._load_lock = threading.Lock()
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def loaded(self):
        """(model, tokenizer), loaded on first use."""
        with self._load_lock:
            if self._loaded is None:
                log.info("loading local model %s in %s", self.path, self.dtype)
                self._loaded = load(self.path, self.dtype)
            return self._loaded

    async def generate(
        self,
        messages: list[dict],
        *,
        n: int,
        temperature: float,
        max_tokens: int,
        json_mode: bool,
        seed: int | None,
    ) -> Completion:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(messages, n, future, (temperature, max_tokens, seed)))
        return await future

    async def _serve(self) -> None:
        queue = self._queue
        while True:
            first = await queue.get()
            await asyncio.sleep(_BATCH_WINDOW_S)  # let concurrent requests join the batch
            # batch_size bounds the rows (sequences), not the requests: a request for n is n rows,
            # and one larger than the batch runs alone.
            batch, later, rows = [first], [], first.n
            while not queue.empty() and rows < self.batch_size:
                job = queue.get_nowait()
                if job.params == first.params and rows + job.n <= self.batch_size:
                    batch.append(job)
                    rows += job.n
                else:
                    later.append(job)
            for job in later:
                queue.put_nowait(job)
            try:
                results = await asyncio.to_thread(self._generate, batch)
            except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests, not the server
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    def _generate(self, batch: list[_Job]) -> list[Completion]:
        """One ``generate`` call for the batch: each prompt is a row repeated ``n`` times for its own
        ``n``, so requests with different ``n`` share the call and it makes exactly the sequences
        asked for (never ``max(n)`` for every request)."""
        import torch
        from transformers import StoppingCriteriaList

        model, tokenizer = self.loaded()
        temperature, max_tokens, seed = batch[0].params
        prompts = []
        for job in batch:
            text = tokenizer.apply_chat_template(job.messages, add_generation_prompt=True, tokenize=False)
            prompts += [text] * job.n
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            model.device
        )
        if seed is not None:
            torch.manual_seed(seed)
        sample = temperature > 0
        prompt_width = encoded["input_ids"].shape[1]
        progress = _progress_criterion(
            self.model, len(prompts), prompt_width, max_tokens, tokenizer.pad_token_id
        )
        with torch.no_grad():
            output = model.generate(
                **encoded,
                max_new_tokens=max_tokens,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                stopping_criteria=StoppingCriteriaList([progress]),
            )
        results, row = [], 0
        for job in batch:
            prompt_tokens = int(encoded["attention_mask"][row].sum())
            texts, completion_tokens = [], 0
            for _ in range(job.n):
                generated = output[row, prompt_width:]
                keep = generated[generated != tokenizer.pad_token_id]
                completion_tokens += int(keep.numel())
                texts.append(tokenizer.decode(keep, skip_special_tokens=True))
                row += 1
            results.append(Completion(texts, prompt_tokens, completion_tokens))
        elapsed = time.monotonic() - progress.start
        generated = sum(result.completion_tokens for result in results)
        log.info(
            "%s: generated %d tokens in %d sequences in %.1f s (%d steps), %.1f tokens/s",
            self.model,
            generated,
            len(prompts),
            elapsed,
            progress.steps,
            generated / elapsed if elapsed > 0 else 0.0,
        )
        return results

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()


def _progress_criterion(model: str, sequences: int, prompt_width: int, max_tokens: int, pad_token_id):
    """A stopping criterion that never stops anything: at each step of ``generate`` it counts the step
    and looks at the clock, and once :data:`PROGRESS_INTERVAL_S` has passed since the last line it logs
    one (the tokens so far are counted only then, as the final count is: every token that is not padding)."""
    import torch
    from transformers import StoppingCriteria

    class Progress(StoppingCriteria):
        def __init__(self):
            self.interval_s = PROGRESS_INTERVAL_S
            self.start = self.last = time.monotonic()
            self.steps = 0
            self._never: torch.Tensor | None = None

        def __call__(self, input_ids, scores, **kwargs):
            self.steps += 1
            now = time.monotonic()
            if now - self.last >= self.interval_s:
                self.last = now
                tokens = int((input_ids[:, prompt_width:] != pad_token_id).sum())
                elapsed = now - self.start
                log.info(
                    "%s: generating %d sequences, %d tokens so far (step %d of at most %d) in %.0f s, %.1f tokens/s",
                    model,
                    sequences,
                    tokens,
                    self.steps,
                    max_tokens,
                    elapsed,
                    tokens / elapsed if elapsed > 0 else 0.0,
                )
            if self._never is None or self._never.shape[0] != input_ids.shape[0]:
                self._never = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            return self._never

    return Progress()
