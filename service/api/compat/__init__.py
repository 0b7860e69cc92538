"""Compatible APIs: OpenAI Images (`openai.py`) and AUTOMATIC1111's `/sdapi/v1` (`a1111.py`).

Adapters at the edge (architecture convention 12): each translates its clients' requests into a native
request body and hands it to `service.api.submit.submit_request`, the same path `POST /generate` takes
(validation, limits, API keys, queue, workers, metrics), then translates the finished job back into the
answer its clients expect. `waiting.py` holds what both share: hold the request until the job ends.
"""
