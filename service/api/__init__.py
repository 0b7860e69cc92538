"""The HTTP API (FastAPI): the contract's routes, validation, auth, and the API's side of the job
record. Never imports torch, diffusers or the worker code; `app.create_app` builds it."""
