"""Ray Tune integration: search spaces (`space`), trial storage (`storage`), joining a cluster (`cluster`),
the trainable (`trainable`), the searcher (`search`), the driver (`driver`), what a sweep's trials ended with
(`results`) and the one rule for a sweep's best trial (`selection`).

No re-exports: importing `supuq.sweep.selection` (which reads MLflow only) must not import Ray.
"""
