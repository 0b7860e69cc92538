"""The GPU worker side of Fresco: resident models, task pipelines, encoding (see workers/worker.py).

Importing it changes nothing in the process; `workers/tuning.py` is what a worker calls at start.
"""
