"""A local Hugging Face causal LM behind the gateway interface, generating in-process.

``local:PATH`` names a Hugging Face model folder or a ``.gguf`` file; ``local:NAME`` a model pulled
with ``w4s models pull NAME``. Concurrent requests with the same sampling parameters are batched
into one ``generate`` call (left padding), which is where a CPU or a GPU earns its throughput.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from w4s.errors import ConfigError
from w4s.llm.backends import Completion

log = logging.getLogger(__name__)

_BATCH_WINDOW_S = 0.01


def resolve(model: str) -> Path:
    """The folder or GGUF file that ``local:...`` names."""
    from w4s.llm import models

    ref = model.removeprefix("local:")
    if ref in models.KNOWN:
        path = models.model_dir(ref)
        if not (path / "config.json").is_file():
            raise ConfigError(f"model {ref!r} is not pulled yet; run `w4s models pull {ref}`")
        return path
    path = Path(ref).expanduser().resolve()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    raise ConfigError(
        f"local model {ref!r} is neither a pulled model ({', '.join(models.KNOWN)}), a Hugging Face folder with "
        "config.json, nor a .gguf file"
    )


def fingerprint(path: Path) -> str:
    """The revision of a local model, for cache keys: a retrained checkpoint saved in the same place
    gets a new one (sizes and modification times of its files, hashed; no weights are read)."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def load(path: Path):
    """(model, tokenizer) from a folder or a GGUF file, in float32 on the CPU or the first GPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    folder = path
    if path.suffix == ".gguf":
        folder, kwargs = path.parent, {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


@dataclass
class _Job:
    messages: list[dict]
    n: int
    future: asyncio.Future
    params: tuple = field(default=())


class LocalBackend:
    def __init__(self, model: str, batch_size: int = 8):
        self.model = model
        self.path = resolve(model)
        self.identity = f"local:{self.path}@{fingerprint(self.path)}"
        self.batch_size = batch_size
        self._loaded = None
        self._load_lock = threading.Lock()
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def _ensure_loaded(self):
        with self._load_lock:
            if self._loaded is None:
                log.info("loading local model %s", self.path)
                self._loaded = load(self.path)
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
            batch, later = [first], []
            while not queue.empty() and len(batch) < self.batch_size:
                job = queue.get_nowait()
                (batch if job.params == first.params else later).append(job)
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
        import torch

        model, tokenizer = self._ensure_loaded()
        temperature, max_tokens, seed = batch[0].params
        prompts = [
            tokenizer.apply_chat_template(job.messages, add_generation_prompt=True, tokenize=False)
            for job in batch
        ]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            model.device
        )
        widest = max(job.n for job in batch)
        if seed is not None:
            torch.manual_seed(seed)
        sample = temperature > 0
        with torch.no_grad():
            output = model.generate(
                **encoded,
                max_new_tokens=max_tokens,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=None,
                top_k=None,
                num_return_sequences=widest,
                pad_token_id=tokenizer.pad_token_id,
            )
        prompt_width = encoded["input_ids"].shape[1]
        results = []
        for row, job in enumerate(batch):
            texts, completion_tokens = [], 0
            for k in range(job.n):
                generated = output[row * widest + k, prompt_width:]
                keep = generated[generated != tokenizer.pad_token_id]
                completion_tokens += int(keep.numel())
                texts.append(tokenizer.decode(keep, skip_special_tokens=True))
            prompt_tokens = int(encoded["attention_mask"][row].sum())
            results.append(Completion(texts, prompt_tokens, completion_tokens))
        return results

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
