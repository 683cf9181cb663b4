"""Stage 4, evaluate: answer test samples on every rank (predictions), score them in metres
against the baselines, per bucket (trajectory, metrics, baselines), and write the report with
its plots (report, plots)."""
