"""Which URLs a request may name as its `webhook`, and how the dispatcher reaches them: the guarded
URL rules of service/fetch.py (https; public addresses only, checked again at every attempt), with the
networks FRESCO_WEBHOOK_ALLOW_NETWORKS names exempt, and plain http and any address allowed when the
server allows private targets (local development, tests). The cloud metadata addresses never are."""

from __future__ import annotations

from service.fetch import ANY_ADDRESS, FetchRejected, check_url
from service.settings import Settings

NO_SECRET = "this server sends no webhooks (FRESCO_WEBHOOK_SECRET is not set)"


def schemes(settings: Settings) -> list[str]:
    return ["https", "http"] if settings.webhook_allow_private else ["https"]


def allowed_networks(settings: Settings) -> list[str]:
    return ANY_ADDRESS if settings.webhook_allow_private else list(settings.webhook_allow_networks)


async def problem(url: str, settings: Settings) -> str | None:
    """Why a request may not name `url` as its webhook (a message for its 422), or None."""
    if not settings.webhook_secret:
        return NO_SECRET
    try:
        await check_url(url, schemes=schemes(settings), allowed_networks=allowed_networks(settings),
                        timeout_s=settings.webhook_timeout_s)
    except FetchRejected as exc:
        return str(exc)
    return None
