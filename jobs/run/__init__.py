"""The bookkeeping of a run around the pipeline: preflight, plan, resume identity, Ray start-up and the cluster,
progress, logs, errors, verification of what was staged, metrics, MLflow reporting and the summary."""
