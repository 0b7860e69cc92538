"""Webhooks: signed POSTs of a job's JobView to the URL its request named, at the events it asked for.

The transitions write each delivery owed to an outbox in Redis, in the same atomic step
(service/jobs/scripts/lib/webhook_outbox.lua); the dispatcher (`dispatcher.py`, in each API process or
alone: `fresco webhooks`) takes due deliveries with a lease, signs and sends them (`signing.py`), and
retries with backoff (`outbox.py` holds the scripts it does that with). `targets.py` says which URLs
may be named; `metrics.py` counts what happened. docs/webhooks.md is the user's guide.
"""
