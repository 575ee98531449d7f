"""What each pipeline stage does, without Kubeflow: plain functions over the public API of :mod:`w4s`
that take paths and parameters and return metrics. The components (:mod:`w4s.pipelines.components`)
are one call to these; tests call them directly as well. (A component's module cannot hold this
code: KFP's runtime imports it without the pipeline-building half of ``kfp.dsl``.)"""
