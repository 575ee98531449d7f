"""Dequantize a GGUF file (e.g. Qwen2.5-Coder-1.5B-Instruct Q4_K_M from
shared/tools/pull-qwen-coder-1.5b.sh) into a bf16 Hugging Face folder with its tokenizer, which both
transformers (perf/train_speed.py --model) and vLLM load without conversion at start-up.

Usage: python perf/gguf_to_hf.py MODEL.gguf OUT_DIR    (needs transformers and gguf)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    if not args.gguf.is_file():
        print(f"gguf_to_hf: {args.gguf} does not exist", file=sys.stderr)
        return 2
    if (args.out / "config.json").is_file():
        print(f"{args.out} already holds a model; kept")
        return 0
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(args.gguf.parent), args.gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
