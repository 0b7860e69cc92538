"""OpenAI Images API: `POST /v1/images/generations` and `POST /v1/images/edits` (docs/openai.md).

An adapter at the edge (architecture convention 12): `forms` reads what OpenAI clients send, `routes`
translates it to native request bodies for the one submit path and the finished jobs back to OpenAI's
answer, `errors` answers every error in OpenAI's shape, `schema` documents the routes in OpenAPI.
"""

from service.api.compat.openai_images.routes import router

__all__ = ["router"]
