"""Compatible APIs: OpenAI Images (`openai_images/`) and AUTOMATIC1111's `/sdapi/v1` (`a1111/`).

Adapters at the edge (architecture convention 12): each translates its clients' requests into native
request bodies and hands them to `service.api.submit` (validate_request, enqueue), the path `POST /generate`
takes (validation, limits, API keys, queue, workers, metrics), then translates the finished jobs back into
the answer its clients expect. `waiting.py` holds what both share: hold the request until the job ends.
"""
