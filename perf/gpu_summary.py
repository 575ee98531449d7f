"""Gather what perf/gpu_check.sh wrote into OUT/summary.json and print the rows for docs/results.md.

Usage: python perf/gpu_summary.py OUT [FAILED_STEP ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _pct(score) -> str:
    return "-" if score is None else f"{100 * score:.1f}%"


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: gpu_summary.py OUT [FAILED_STEP ...]", file=sys.stderr)
        return 2
    out, failed = Path(sys.argv[1]), sys.argv[2:]
    train = {p.stem: _read(p) for p in sorted(out.glob("train-b*.json"))}
    baseline = {split: _read(out / f"baseline-{split}.json") for split in ("validation", "test")}
    report = _read(out / "optimize" / "report.json")
    evaluated = _read(out / "evaluate-test.json")
    best = (report or {}).get("best") or {}
    usage = (report or {}).get("usage") or {}
    summary = {
        "failed_steps": failed,
        "train_speed": train,
        "baseline_one_call": {k: v and v.get("score") for k, v in baseline.items()},
        "optimize": {
            "best_validation": best.get("valid_score"),
            "best_test": best.get("test_score"),
            "test_samples": best.get("test_samples"),
            "baselines_validation": (report or {}).get("baselines"),
            "usage": usage,
            "stopped": (report or {}).get("stopped"),
        },
        "evaluate_test": evaluated and {k: evaluated.get(k) for k in ("score", "usage", "wall_seconds")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print("| run | tokens/s w4s | tokens/s reference | ratio | peak GiB w4s | peak GiB reference |")
    for name, row in train.items():
        if row:
            print(
                f"| {name} | {row['w4s_tokens_per_second']} | {row['reference_tokens_per_second']} | "
                f"{row['ratio']}x | {row.get('w4s_peak_gpu_gib')} | {row.get('reference_peak_gpu_gib')} |"
            )
    calls = sum((side or {}).get("llm_calls", 0) for side in usage.values())
    print(
        f"one call: validation {_pct(summary['baseline_one_call']['validation'])}, test "
        f"{_pct(summary['baseline_one_call']['test'])}; optimized: validation {_pct(best.get('valid_score'))}, "
        f"test {_pct(best.get('test_score'))}; w4s evaluate on test "
        f"{_pct((evaluated or {}).get('score'))}; LLM calls {calls}; failed steps: {failed or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
