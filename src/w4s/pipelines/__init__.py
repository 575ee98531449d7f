"""Kubeflow Pipelines: one component per stage, the pipelines built from them, compiling, running
them locally (``kfp.local``) and on a cluster (``kfp.Client``). Thin layers over the public API of
:mod:`w4s`; needs the ``kfp`` extra."""
