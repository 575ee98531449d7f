"""The model registry on real stores: register, promote, race, roll back, download, load, and what a
changed or missing file in the store does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from tests.conftest import REPO, ScriptedServer
from tests.optimizer.scenario import script as optimizer_script
from tests.training import tiny
from w4s.errors import ConfigError, InfrastructureError
from w4s.promotion import PromotionConfig, promote
from w4s.tracking import registry as reg
from w4s.tracking.registry import Registry
from w4s.tracking.store import TrackingConfig

LIMIT = 6


def w4s(*args, env: dict, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "w4s.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def evaluation(scores: dict[str, float], executor: str = "gpt-4o-mini", task: str = "drop") -> dict:
    """A complete test evaluation JSON with these per-sample scores (constructed evidence)."""
    return {
        "version": 1,
        "task": task,
        "split": "test",
        "workflow": "constructed",
        "executor": executor,
        "score": sum(scores.values()) / len(scores),
        "complete": True,
        "samples_total": len(scores),
        "samples_run": len(scores),
        "samples_failed": 0,
        "budget_exhausted": None,
        "sandbox": {},
        "samples": [{"id": i, "score": s, "answer": None, "error": None} for i, s in scores.items()],
        "usage": {"cost_usd": 0.01 * len(scores)},
        "wall_seconds": 1.0,
    }


def register(registry: Registry, task: str, scores: dict[str, float], source: str, **lineage):
    return registry.register_workflow(
        task=task,
        source=source,
        test_evaluation=evaluation(scores, task=task),
        valid_score=0.5,
        origin="constructed",
        best_baseline="cot",
        meta_agent=lineage or None,
    )


IDS = [f"s{i:03d}" for i in range(200)]


def scores(right: int) -> dict[str, float]:
    """The first ``right`` of 200 samples right."""
    return {sid: 1.0 if n < right else 0.0 for n, sid in enumerate(IDS)}


# --- end to end: optimize -> challenger -> promote -> evaluate the champion ----------------------------


def test_optimize_register_promote_then_evaluate_the_champion(mlflow_server, data_dir, tmp_path):
    server = ScriptedServer(optimizer_script(data_dir, LIMIT))
    env = {"W4S_DATA_DIR": str(data_dir), "MLFLOW_TRACKING_URI": mlflow_server.url}
    flags = ["--meta-base-url", server.url, "--executor-base-url", server.url]
    try:
        optimized = w4s(
            "optimize", "--task", "gsm8k", "--turns", "2", "--candidates", "5", "--validation-limit", str(LIMIT),
            "--test-limit", str(LIMIT), "--sandbox-timeout-s", "1.5", "--out", str(tmp_path / "run"), "--register",
            *flags, env=env,
        )  # fmt: skip
        assert optimized.returncode == 0, optimized.stderr[-3000:]
        report = json.loads((tmp_path / "run" / "report.json").read_text())
        registry = Registry(mlflow_server.url)
        version = registry.version("w4s-workflow-gsm8k@challenger")
        tags = version.tags
        assert tags[reg.TAG_SOURCE_SHA] == reg.sha256_text(
            (tmp_path / "run" / "best_workflow.py").read_text()
        )
        assert float(tags[reg.TAG_TEST_SCORE]) == report["best"]["test_score"] == 1.0
        assert tags[reg.TAG_EXECUTOR] == "gpt-4o-mini" and tags[reg.TAG_TEST_N] == str(LIMIT)
        assert tags[reg.TAG_BASELINE] in {"cot", "cot_sc", "pot"} and reg.TAG_COST in tags
        assert version.run_id == json.loads((tmp_path / "run" / "mlflow.json").read_text())["run_id"]

        decided = w4s(
            "registry", "promote", "w4s-workflow-gsm8k", "--json", str(tmp_path / "decision.json"),
            "--executor-base-url", server.url, env=env,
        )  # fmt: skip
        assert decided.returncode == 0, decided.stderr[-3000:]
        decision = json.loads((tmp_path / "decision.json").read_text())
        assert (
            decision["promoted"] and decision["changed"] and decision["against"].startswith("baseline math/")
        )
        assert decision["comparison"]["n"] == LIMIT and decision["comparison"]["lower"] > 0
        assert registry.aliases("w4s-workflow-gsm8k")[reg.CHAMPION] == str(version.version)
        evidence = registry.version(f"w4s-workflow-gsm8k@{version.version}").tags
        assert evidence["w4s.promotion.decision"] == "promoted" and evidence["w4s.promotion.n"] == str(LIMIT)

        again = w4s("registry", "promote", "w4s-workflow-gsm8k", "--version", str(version.version), env=env)
        assert again.returncode == 0 and "already the champion" in again.stderr
        assert registry.version(f"w4s-workflow-gsm8k@{version.version}").tags == evidence  # nothing changed

        scored = w4s(
            "evaluate", "mlflow:w4s-workflow-gsm8k@champion", "--task", "gsm8k", "--split", "test", "--limit",
            str(LIMIT), "--json", str(tmp_path / "champion.json"), "--executor-base-url", server.url, env=env,
        )  # fmt: skip
        assert scored.returncode == 0, scored.stderr[-3000:]
        assert json.loads((tmp_path / "champion.json").read_text())["score"] == report["best"]["test_score"]

        shown = w4s("registry", "show", "w4s-workflow-gsm8k", "--json", str(tmp_path / "show.json"), env=env)
        assert shown.returncode == 0 and "champion" in shown.stdout and "promoted" in shown.stdout
        assert "baseline" in shown.stdout

        served = subprocess.run(
            [sys.executable, "-c", PREDICT, mlflow_server.url, server.url], cwd=REPO, capture_output=True, text=True,
            env={**os.environ, **env, "W4S_EXECUTOR_API_KEY": "k"}, timeout=300,
        )  # fmt: skip
        assert served.returncode == 0, served.stderr[-3000:]
        (answer,) = json.loads(served.stdout.strip().splitlines()[-1])
        assert answer["error"] is None and answer["answer"] not in (None, "", "none")
    finally:
        server.stop()


PREDICT = """
import json, sys
import mlflow
from w4s.tasks import get_task
from w4s.evaluation import select
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(
    "models:/w4s-workflow-gsm8k@champion", model_config={"executor": {"base_url": sys.argv[2]}}
)
task = get_task("gsm8k")
sample = select(task.load("test"), 1, 0)[0]
print(json.dumps(model.predict([sample.prompt])))
"""


def test_a_changed_file_in_the_store_is_refused_not_run(start_mlflow_server, tmp_path):
    server = start_mlflow_server()
    registry = Registry(server.url)
    version = register(registry, "svamp", scores(100), "def solver(agent, task):\n    return '1'\n")
    stored = [p for p in (server.root / "artifacts").rglob(reg.WORKFLOW_FILE)]
    assert len(stored) == 1
    stored[0].write_text("def solver(agent, task):\n    import os\n    return os.environ\n")
    with pytest.raises(InfrastructureError, match="does not match its registered sha256"):
        registry.workflow(f"w4s-workflow-svamp@{version.version}")
    with pytest.raises(InfrastructureError, match="stored file was changed"):
        registry.download(f"w4s-workflow-svamp@{version.version}", tmp_path / "copy")
    assert not (tmp_path / "copy").exists()  # nothing half-checked is left behind


# --- promotion rules on constructed per-sample results (embedded store: no server needed) ---------------


@pytest.mark.parametrize(
    ("challenger_right", "margin", "promoted"),
    [
        (170, 0.0, True),  # a clear win: 85% against 50%
        (100, 0.0, False),  # a tie
        (102, 0.0, False),  # noise-level gain
        (60, 0.0, False),  # a regression
        (170, 0.5, False),  # a win smaller than the margin asked for
    ],
)
def test_promotion_rule_on_constructed_results(mlflow_embedded, challenger_right, margin, promoted):
    registry = Registry(mlflow_embedded.tracking_uri)
    champion = register(registry, "drop", scores(100), "def solver(agent, task):\n    return 'champion'\n")
    assert registry.move_champion("w4s-workflow-drop", str(champion.version), expected=None)
    challenger = register(
        registry, "drop", scores(challenger_right), "def solver(agent, task):\n    return 'new'\n"
    )
    decision = promote("w4s-workflow-drop", PromotionConfig(margin=margin))
    assert decision.version == str(challenger.version) and decision.promoted is promoted
    assert decision.changed is promoted and decision.evaluated == ()  # stored results reused: nothing run
    assert decision.comparison.n == 200 and decision.against == f"version {champion.version}"
    tags = registry.version(f"w4s-workflow-drop@{challenger.version}").tags
    assert tags["w4s.promotion.decision"] == ("promoted" if promoted else "rejected")
    assert tags["w4s.promotion.champion_mean"] == "0.500000" and tags["w4s.promotion.margin"] == repr(margin)
    expected = challenger.version if promoted else champion.version
    assert registry.aliases("w4s-workflow-drop")[reg.CHAMPION] == str(expected)


def test_promote_twice_rollback_and_the_evidence_in_show(mlflow_embedded, tmp_path):
    registry = Registry(mlflow_embedded.tracking_uri)
    first = register(registry, "drop", scores(60), "def solver(agent, task):\n    return 'v1'\n")
    registry.move_champion("w4s-workflow-drop", str(first.version), expected=None)
    second = register(registry, "drop", scores(120), "def solver(agent, task):\n    return 'v2'\n")
    assert promote("w4s-workflow-drop").changed
    third = register(registry, "drop", scores(180), "def solver(agent, task):\n    return 'v3'\n")
    rejected = register(registry, "drop", scores(181), "def solver(agent, task):\n    return 'v3b'\n")
    decision = promote("w4s-workflow-drop", PromotionConfig(model_version=str(third.version)))
    assert decision.changed and registry.champion("w4s-workflow-drop").version == third.version

    assert not promote("w4s-workflow-drop", PromotionConfig(model_version=str(rejected.version))).promoted
    evidence = registry.version(f"w4s-workflow-drop@{rejected.version}").tags
    assert evidence["w4s.promotion.decision"] == "rejected" and evidence["w4s.promotion.decided_at"]
    again = promote("w4s-workflow-drop", PromotionConfig(model_version=str(rejected.version)))
    assert not again.changed and registry.version(f"w4s-workflow-drop@{rejected.version}").tags == evidence

    env = {"W4S_HOME": str(mlflow_embedded.home)}
    shown = w4s("registry", "show", "w4s-workflow-drop", "--json", str(tmp_path / "show.json"), env=env)
    assert shown.returncode == 0, shown.stderr
    rows = {row["version"]: row for row in json.loads((tmp_path / "show.json").read_text())["versions"]}
    assert "rejected vs version" in rows[str(rejected.version)]["decision"]
    assert rows[str(third.version)]["aliases"] == "champion"

    rolled = w4s("registry", "rollback", "w4s-workflow-drop", env=env)
    assert (
        rolled.returncode == 0
        and f"from version {third.version} to version {second.version}" in rolled.stderr
    )
    assert registry.champion("w4s-workflow-drop").version == second.version
    assert w4s("registry", "rollback", "w4s-workflow-drop", env=env).returncode == 0
    assert registry.champion("w4s-workflow-drop").version == first.version
    last = w4s("registry", "rollback", "w4s-workflow-drop", env=env)
    assert (
        last.returncode == 2
        and "was the first champion" in last.stderr
        and len(last.stderr.splitlines()) == 1
    )


def test_two_promoters_racing_move_the_alias_once(mlflow_server):
    """Both compare against the same champion; the second to take the lock finds it moved and moves
    nothing (read, compare, re-read)."""
    registry = Registry(mlflow_server.url)
    task = "mgsm"
    base = register(registry, task, scores(80), "def solver(agent, task):\n    return 'base'\n")
    registry.move_champion(f"w4s-workflow-{task}", str(base.version), expected=None)
    contenders = [
        register(registry, task, scores(150 + n), f"def solver(agent, task):\n    return 'c{n}'\n")
        for n in range(2)
    ]
    both_compared = threading.Barrier(2)
    original = Registry.move_champion

    def move_after_both_compared(self, *args, **kwargs):
        both_compared.wait(timeout=60)
        return original(self, *args, **kwargs)

    results = {}

    def run(version):
        results[version] = promote(
            f"w4s-workflow-{task}",
            PromotionConfig(model_version=str(version)),
            tracking=TrackingConfig(tracking_uri=mlflow_server.url),
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Registry, "move_champion", move_after_both_compared)
        threads = [threading.Thread(target=run, args=(c.version,)) for c in contenders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    decisions = list(results.values())
    assert len(decisions) == 2 and all(d.promoted for d in decisions)
    moved = [d for d in decisions if d.changed]
    lost = [d for d in decisions if not d.changed]
    assert len(moved) == 1 and len(lost) == 1 and "champion changed" in lost[0].reason
    assert str(registry.champion(f"w4s-workflow-{task}").version) == moved[0].version
    assert reg.LOCK_PREFIX + f"w4s-workflow-{task}" not in [
        m.name for m in registry.client.search_registered_models()
    ]


# --- bad input and faults ---------------------------------------------------------------------------


def test_unknown_models_and_aliases_are_one_line_listing_what_exists(mlflow_embedded, data_dir):
    registry = Registry(mlflow_embedded.tracking_uri)
    register(registry, "gsm_hard", scores(10), "def solver(agent, task):\n    return '1'\n")
    env = {"W4S_HOME": str(mlflow_embedded.home), "W4S_DATA_DIR": str(data_dir)}
    unknown = w4s("registry", "show", "w4s-workflow-nope", env=env)
    assert unknown.returncode == 2 and "registered: w4s-workflow-gsm_hard" in unknown.stderr
    alias = w4s("evaluate", "mlflow:w4s-workflow-gsm_hard@champion", "--task", "gsm_hard", env=env)
    assert (
        alias.returncode == 2
        and "has no alias 'champion'" in alias.stderr
        and "challenger -> 1" in alias.stderr
    )
    assert len(alias.stderr.strip().splitlines()) == 1
    other = w4s("evaluate", "mlflow:w4s-workflow-gsm_hard@1", "--task", "gsm8k", env=env)
    assert other.returncode == 2 and "pass --task gsm_hard" in other.stderr
    bad = w4s("registry", "download", "w4s-meta-agent@champion", "--to", "/tmp/x", env=env)
    assert bad.returncode == 2 and "no registered model 'w4s-meta-agent'" in bad.stderr
    syntax = w4s("registry", "download", "not a name!", "--to", "/tmp/x", env=env)
    assert syntax.returncode == 2 and "is not a registry reference" in syntax.stderr
    with pytest.raises(ConfigError, match="no complete test score"):
        registry.register_workflow(
            task="gsm_hard", source="x", test_evaluation={**evaluation(scores(1)), "complete": False},
            valid_score=None, origin="x",
        )  # fmt: skip


def test_wrong_s3_credentials_are_one_line_and_register_nothing(
    mlflow_server, s3_server, use_env, monkeypatch
):
    """Artifacts written by the client straight to S3 (an experiment whose location is a bucket)."""
    registry = Registry(mlflow_server.url)
    task = "humaneval"
    registry.client.create_experiment(f"w4s/{task}", artifact_location=s3_server.artifacts_uri("direct"))
    use_env(s3_server)
    register(registry, task, scores(10), "def solver(agent, task):\n    return 'ok'\n")
    assert any(key.endswith(reg.WORKFLOW_FILE) for key in s3_server.keys("direct"))
    # A process with a wrong secret (MLflow keeps one S3 client per process and its settings).
    wrong = subprocess.run(
        [sys.executable, "-c", REGISTER, mlflow_server.url, task],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, **s3_server.env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"},
    )  # fmt: skip
    assert wrong.returncode == 3, wrong.stderr[-3000:]
    message = wrong.stdout.strip()
    assert s3_server.bucket in message and s3_server.endpoint_url in message and "\n" not in message
    assert "AWS_SECRET_ACCESS_KEY" in message
    assert len(registry.versions(f"w4s-workflow-{task}")) == 1  # no version points at missing files


REGISTER = """
import sys
from tests.tracking.test_registry import register, scores
from w4s.errors import InfrastructureError
from w4s.tracking.registry import Registry
try:
    register(Registry(sys.argv[1]), sys.argv[2], scores(10), "def solver(agent, task):\\n    return 'b'\\n")
except InfrastructureError as exc:
    print(exc)
    sys.exit(3)
"""


def test_an_interrupted_registration_leaves_no_version(mlflow_embedded):
    registry = Registry(mlflow_embedded.tracking_uri)
    register(registry, "mbpp", scores(5), "def solver(agent, task):\n    return 'a'\n")
    original = registry.client.log_model_artifacts

    def upload_then_die(model_id, folder):
        original(model_id, folder)
        raise KeyboardInterrupt  # the process is stopped after the upload, before the version exists

    registry.client.log_model_artifacts = upload_then_die
    with pytest.raises(KeyboardInterrupt):
        register(registry, "mbpp", scores(5), "def solver(agent, task):\n    return 'b'\n")
    assert [str(v.version) for v in Registry(mlflow_embedded.tracking_uri).versions("w4s-workflow-mbpp")] == [
        "1"
    ]


# --- the meta-agent ------------------------------------------------------------------------------


def test_train_register_download_load_and_generate(mlflow_server, tmp_path):
    from tests.training.test_train import record, write

    base = tiny.save_base(tmp_path / "base")
    (tmp_path / "run").mkdir()
    data = write(
        tmp_path / "run" / "trajectories.jsonl", [record(i, 1.0 if i % 2 else -0.1) for i in range(6)]
    )
    reg.write_run_record(tmp_path / "run", mlflow_server.url, "0" * 32, "0")  # as if optimize recorded it
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    trained = w4s(
        "train", "--trajectories", str(data), "--base-model", str(base), "--output", str(tmp_path / "out"),
        "--batch-size", "2", "--max-steps", "2", "--max-length", "64", "--register", env=env,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    registry = Registry(mlflow_server.url)
    version = registry.version("w4s-meta-agent@challenger")
    assert version.tags[reg.TAG_BASE_MODEL] == str(base) and version.tags[reg.TAG_LORA] == "true"
    assert version.tags[reg.TAG_RWR_T] == "0.4" and version.tags[reg.TAG_DATA_RUNS] == "0" * 32
    training_run = json.loads((tmp_path / "out" / "mlflow.json").read_text())["run_id"]
    assert version.run_id == training_run

    got = w4s("registry", "download", "w4s-meta-agent@challenger", "--to", str(tmp_path / "dl"), env=env)
    assert got.returncode == 0, got.stderr[-3000:]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dl")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "dl")
    prompt = tokenizer("<user> write a workflow", return_tensors="pt")
    output = model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert output.shape[1] > prompt["input_ids"].shape[1]

    _, local = registry.local_model("w4s-meta-agent@challenger")  # downloaded once, then reused
    assert (local / "config.json").is_file() and registry.local_model("w4s-meta-agent@challenger")[1] == local


def test_a_registered_meta_agent_writes_workflows_that_name_it(mlflow_server, data_dir, tmp_path):
    """--meta-model mlflow:w4s-meta-agent@VERSION: the checkpoint generates, and what the run
    registers carries the version as its lineage."""
    registry = Registry(mlflow_server.url)
    meta = registry.register_meta_agent(
        tiny.save_base(tmp_path / "base"), base_model="tiny", temperature=0.4, lora=False, data_runs=[]
    )
    server = ScriptedServer(optimizer_script(data_dir, 3))
    env = {"W4S_DATA_DIR": str(data_dir), "MLFLOW_TRACKING_URI": mlflow_server.url}
    try:
        done = w4s(
            "optimize", "--task", "svamp", "--turns", "1", "--candidates", "1", "--repairs", "0",
            "--validation-limit", "3", "--test-limit", "3", "--out", str(tmp_path / "run"), "--register",
            "--meta-model", f"mlflow:w4s-meta-agent@{meta.version}", "--meta-max-tokens", "16",
            "--executor-base-url", server.url, env=env,
        )  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["extra"]["meta_agent"]["version"] == str(meta.version)
    written = registry.version("w4s-workflow-svamp@challenger").tags
    assert written[reg.TAG_META_NAME] == reg.META_AGENT and written[reg.TAG_META_VERSION] == str(meta.version)


def test_meta_agent_promotion_pools_the_tasks_of_the_workflows_each_version_wrote(mlflow_embedded, tmp_path):
    registry = Registry(mlflow_embedded.tracking_uri)
    base = tiny.save_base(tmp_path / "base")
    old = registry.register_meta_agent(base, base_model="tiny", temperature=0.4, lora=False, data_runs=[])
    registry.move_champion(reg.META_AGENT, str(old.version), expected=None)
    new = registry.register_meta_agent(base, base_model="tiny", temperature=0.4, lora=False, data_runs=["r1"])
    for task, (was, now) in {"drop": (90, 150), "svamp": (100, 160)}.items():
        register(registry, task, scores(was), f"def solver(agent, task):\n    return 'old {task}'\n",
                 name=reg.META_AGENT, version=str(old.version))  # fmt: skip
        register(registry, task, scores(now), f"def solver(agent, task):\n    return 'new {task}'\n",
                 name=reg.META_AGENT, version=str(new.version))  # fmt: skip
    decision = promote(reg.META_AGENT)
    assert decision.promoted and decision.changed and decision.comparison.n == 400
    assert decision.comparison.method.endswith("stratified-by-task")
    assert registry.champion(reg.META_AGENT).version == new.version
    tags = registry.version(f"{reg.META_AGENT}@{new.version}").tags
    assert tags["w4s.promotion.against"] == f"version {old.version}'s workflows"

    lonely = registry.register_meta_agent(base, base_model="tiny", temperature=0.4, lora=False, data_runs=[])
    with pytest.raises(
        ConfigError, match=f"no registered workflow was written by w4s-meta-agent version {lonely.version}"
    ):
        promote(reg.META_AGENT)


@pytest.mark.slow
def test_production_store_postgres_and_s3_register_promote_download_load(
    mlflow_server_postgres, s3_server, tmp_path
):
    """As in production: runs and the registry in PostgreSQL, every file on S3 (through the server)."""
    registry = Registry(mlflow_server_postgres.url)
    base = tiny.save_base(tmp_path / "base")
    version = registry.register_meta_agent(base, base_model="tiny", temperature=0.4, lora=False, data_runs=[])
    assert any(key.endswith("model.safetensors") for key in s3_server.keys("mlflow-pg"))
    registry.move_champion(reg.META_AGENT, str(version.version), expected=None)
    folder = registry.download(f"{reg.META_AGENT}@champion", tmp_path / "dl")
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(folder).config.num_hidden_layers == 2
    champion = register(registry, "drop", scores(100), "def solver(agent, task):\n    return 'a'\n")
    registry.move_champion("w4s-workflow-drop", str(champion.version), expected=None)
    register(registry, "drop", scores(170), "def solver(agent, task):\n    return 'b'\n")
    decision = promote("w4s-workflow-drop", tracking=TrackingConfig(tracking_uri=mlflow_server_postgres.url))
    assert decision.changed and registry.workflow("w4s-workflow-drop@champion")[1].endswith("return 'b'\n")
