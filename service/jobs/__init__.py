"""The job record, shared by the API, the workers and the reaper: its Redis keys (keys.py), its
vocabulary (states.py), its atomic transitions (protocol.py over scripts/*.lua), worker heartbeats
and the reaper. Imports neither FastAPI nor torch."""
