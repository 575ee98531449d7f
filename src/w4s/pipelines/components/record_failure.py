"""Exit handler: however a pipeline run ends, one MLflow run in experiment ``w4s/pipelines`` records
its state and error (FAILED unless it succeeded), so a scheduled run that broke at 3 a.m. is found
where every other run is."""

from kfp import dsl

from w4s.pipelines import settings


@dsl.component(base_image=settings.IMAGE, install_kfp_package=False)
def record_failure(
    status: dsl.PipelineTaskFinalStatus, pipeline: str, job: str, tracking_uri: str = ""
) -> str:
    """Record how the pipeline run ended (the exit handler's task)."""
    from w4s.pipelines.stages.record_failure import run

    return run(
        pipeline=pipeline,
        job=job,
        state=status.state,
        error=str(status.error_message or ""),
        tracking_uri=tracking_uri,
    )
