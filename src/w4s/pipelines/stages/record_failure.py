"""Exit handler: however a pipeline run ends, one MLflow run in experiment ``w4s/pipelines`` records
its state and error (FAILED unless it succeeded), so a scheduled run that broke at 3 a.m. is found
where every other run is."""

import logging

log = logging.getLogger(__name__)


def run(*, pipeline: str, job: str, state: str, error: str = "", tracking_uri: str = "") -> str:
    """Record the end of pipeline run ``job``; returns the MLflow run id."""
    from w4s.pipelines import params
    from w4s.tracking.runs import record_pipeline_status
    from w4s.tracking.store import check_store, resolve_uri

    params.component_logging()
    uri = resolve_uri(params.tracking(tracking_uri))
    check_store(uri)
    run_id = record_pipeline_status(uri, pipeline, job, state, error)
    log.info(
        "pipeline %s run %s ended %s; recorded as MLflow run %s in %s", pipeline, job, state, run_id, uri
    )
    return run_id
