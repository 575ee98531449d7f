"""`w4s data pull`: fetch the canonical public benchmark files into the ``W4S_DATA_DIR`` layout.

Needs internet access to the sources below. Every file is written atomically (a partial download
never looks complete), and files already present are kept.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from w4s.errors import ConfigError, InfrastructureError
from w4s.tasks.word_problems import MGSM_LANGUAGES

log = logging.getLogger(__name__)

_GSM8K = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data"
_MGSM = "https://raw.githubusercontent.com/google-research/url-nlp/main/mgsm"
_AFLOW = "https://raw.githubusercontent.com/geekan/MetaGPT/main/examples/aflow/data"
_ADAS = "https://raw.githubusercontent.com/ShengranHu/ADAS/main/dataset"

# Where each file of the layout comes from: the authors' own repositories (GSM8K, MGSM, SVAMP), the
# ADAS repository for GSM-Hard v2, OpenAI simple-evals for DROP, and the AFlow data (MetaGPT) for the
# HumanEval and MBPP validation/test splits used by AFlow and W4S.
SOURCES: dict[str, dict[str, str]] = {
    "gsm8k": {"gsm8k/test.jsonl": f"{_GSM8K}/test.jsonl", "gsm8k/train.jsonl": f"{_GSM8K}/train.jsonl"},
    "mgsm": {f"mgsm/mgsm_{lang}.tsv": f"{_MGSM}/mgsm_{lang}.tsv" for lang in MGSM_LANGUAGES},
    "drop": {
        "drop/drop_v0_dev.jsonl.gz": "https://openaipublic.blob.core.windows.net/simple-evals/drop_v0_dev.jsonl.gz"
    },
    "gsm_hard": {"gsm_hard/gsmhardv2.jsonl": f"{_ADAS}/gsmhardv2.jsonl"},
    "svamp": {"svamp/SVAMP.json": "https://raw.githubusercontent.com/arkilpatel/SVAMP/main/SVAMP.json"},
    "humaneval": {
        "humaneval/validate.jsonl": f"{_AFLOW}/humaneval_validate.jsonl",
        "humaneval/test.jsonl": f"{_AFLOW}/humaneval_test.jsonl",
    },
    "mbpp": {
        "mbpp/validate.jsonl": f"{_AFLOW}/mbpp_validate.jsonl",
        "mbpp/test.jsonl": f"{_AFLOW}/mbpp_test.jsonl",
        "mbpp/public_test.jsonl": f"{_AFLOW}/mbpp_public_test.jsonl",
    },
}


def pull(data_dir: str | os.PathLike, tasks: list[str] | None = None, timeout_s: float = 60.0) -> Path:
    target = Path(data_dir).expanduser().resolve()
    chosen = tasks or sorted(SOURCES)
    unknown = [t for t in chosen if t not in SOURCES]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(sorted(SOURCES))}")
    for task in chosen:
        for relative, url in SOURCES[task].items():
            path = target / relative
            if path.is_file() and path.stat().st_size > 0:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".part")
            try:
                with urllib.request.urlopen(url, timeout=timeout_s) as response, partial.open("wb") as handle:
                    while chunk := response.read(1 << 20):
                        handle.write(chunk)
            except (urllib.error.URLError, OSError) as exc:
                partial.unlink(missing_ok=True)
                raise InfrastructureError(
                    f"could not download {url} ({getattr(exc, 'reason', exc)}); this needs internet access, "
                    "otherwise copy a datasets folder and pass --data-dir"
                ) from None
            os.replace(partial, path)
            log.info("fetched %s", relative)
    return target
