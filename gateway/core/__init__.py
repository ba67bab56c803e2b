"""The gateway's work, free of HTTP: the analysis pipeline, the served model version, readiness, the
audit rows, the rate limit. It takes its backends explicitly and never imports the API layer."""
