"""Stage: register what a pipeline produced in the MLflow registry and run the promotion gate
(:func:`w4s.promotion.promote`) → the decisions as ``Markdown`` and ``Metrics``, and as the task's
output (JSON) for the steps after it.

Two components: ``register_meta_agent`` (the training pipeline: the checkpoint as a
``w4s-meta-agent`` version, then the workflows it wrote in the benchmark as ``w4s-workflow-<task>``
versions whose lineage names it, then the gate for each) and ``register_workflow`` (the workflow
pipeline: one optimize run's best workflow, then the gate)."""

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _gate(
    name: str, promote: bool, promotion_config: dict | None, executor: dict, sandbox, data_dir, tracking
):
    from w4s import promotion
    from w4s.pipelines import params

    if not promote:
        return {"name": name, "promoted": False, "changed": False, "reason": "promotion off for this run"}
    decision = promotion.promote(
        name,
        params.config(promotion.PromotionConfig, promotion_config),
        executor=executor,
        sandbox=sandbox,
        data_dir=data_dir or None,
        tracking=tracking,
    )
    log.info("%s version %s: %s", decision.name, decision.version, decision.reason)
    return decision.to_dict()


def _report(path: str, registered: list[tuple[str, str]], decisions: list[dict]) -> dict:
    lines = ["## Registered", "", "| model | version |", "|---|---|"]
    lines += [f"| {name} | {version} |" for name, version in registered]
    lines += [
        "",
        "## Promotion",
        "",
        "| model | version | promoted | champion moved | why |",
        "|---|---|---|---|---|",
    ]
    for d in decisions:
        lines.append(
            f"| {d['name']} | {d.get('version', '')} | {d['promoted']} | {d['changed']} | {d['reason']} |"
        )
    Path(path).write_text("\n".join(lines) + "\n")
    return {
        "registered": float(len(registered)),
        "promoted": float(sum(1 for d in decisions if d["changed"])),
    }


def run_meta_agent(
    *,
    model: str,
    runs: list[str],
    report: str,
    promote: bool = True,
    promotion_config: dict | None = None,
    executor_model: str = "",
    executor_base_url: str = "",
    executor_max_tokens: int = 0,
    executor_config: dict | None = None,
    sandbox_config: dict | None = None,
    data_dir: str = "",
    tracking_uri: str = "",
) -> tuple[dict, list[dict]]:
    """Register the checkpoint in ``model`` and the benchmark runs' workflows, then the gate:
    the meta-agent first (judged on those workflows), then each workflow."""
    from w4s import api
    from w4s.optimizer.result import OptimizeResult
    from w4s.pipelines import params
    from w4s.sandbox.config import SandboxConfig
    from w4s.tracking import registry as reg

    tracking = params.tracking(tracking_uri)
    registry = api.registry_of(tracking)
    results = {run: OptimizeResult.load(Path(run)) for run in runs}
    scores = {r.task: r.best.test_score for r in results.values() if r.best and r.best.test_score is not None}
    version = reg.register_checkpoint(registry, model, scores=scores or None)
    registered = [(version.name, str(version.version))]
    lineage = {"name": version.name, "version": str(version.version)}
    tasks = []
    for run in results:
        workflow = reg.register_optimize_run(registry, run, meta_agent=lineage)
        registered.append((workflow.name, str(workflow.version)))
        tasks.append(workflow.name)
    executor = (
        params.endpoint(
            executor_model,
            executor_base_url,
            executor_config,
            max_completion_tokens=executor_max_tokens or None,
        )
        if executor_model
        else None
    )
    sandbox = params.config(SandboxConfig, sandbox_config)
    decisions = [_gate(reg.META_AGENT, promote, promotion_config, executor, sandbox, data_dir, tracking)]
    decisions += [
        _gate(name, promote, promotion_config, executor, sandbox, data_dir, tracking) for name in tasks
    ]
    return _report(report, registered, decisions), decisions


def run_workflow(
    *,
    run: str,
    report: str,
    promote: bool = True,
    promotion_config: dict | None = None,
    executor_model: str = "",
    executor_base_url: str = "",
    executor_max_tokens: int = 0,
    executor_config: dict | None = None,
    sandbox_config: dict | None = None,
    data_dir: str = "",
    tracking_uri: str = "",
) -> tuple[dict, list[dict]]:
    """Register one optimize run's best workflow, then the gate for its task."""
    from w4s import api
    from w4s.pipelines import params
    from w4s.sandbox.config import SandboxConfig
    from w4s.tracking import registry as reg

    tracking = params.tracking(tracking_uri)
    workflow = reg.register_optimize_run(api.registry_of(tracking), run)
    executor = (
        params.endpoint(
            executor_model,
            executor_base_url,
            executor_config,
            max_completion_tokens=executor_max_tokens or None,
        )
        if executor_model
        else None
    )
    sandbox = params.config(SandboxConfig, sandbox_config)
    decision = _gate(workflow.name, promote, promotion_config, executor, sandbox, data_dir, tracking)
    return _report(report, [(workflow.name, str(workflow.version))], [decision]), [decision]
