"""Fresco's service side: the HTTP API (api/), the job record shared with workers (jobs/), storage,
the task table, the models catalogue, settings, and the `fresco` command (cli/)."""
