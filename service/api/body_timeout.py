"""A request body must arrive within FRESCO_BODY_TIMEOUT_S of the app's first read (a pure ASGI middleware).

uvicorn bounds how long an idle connection stays open and how large the headers are, but not how long a
body may take: a client that sends one byte every 2 s holds its connection, and the request's task, for as
long as it likes. Here each read of the body waits at most what is left of that time; when it runs out the
client gets a 408 in the API's error shape with `Connection: close`, and whatever the app was doing with
the body stops there (a BodyTimedOut raised from its read). Once the body is in, reads (an events stream
waiting for the client to leave) are not timed.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from service.api.errors import FrescoError, error_response


class BodyTimedOut(FrescoError):
    status, code, message = 408, "request_timeout", "the request body did not arrive in time"


class BodyTimeout:
    def __init__(self, app, timeout_s: float):
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        body_done = timed_out = started = answered = False

        async def timed_receive():
            nonlocal deadline, body_done, timed_out
            if body_done or timed_out:
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                timed_out = True
                raise BodyTimedOut(f"the request body did not arrive within {self.timeout_s:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def answer():
            nonlocal answered
            answered = True
            exc = BodyTimedOut(f"the request body did not arrive within {self.timeout_s:g} s")
            exc.headers = {"Connection": "close"}
            await error_response(Request(scope), exc)(scope, receive, send)

        async def guarded_send(message):
            nonlocal started
            if timed_out and not started:  # whatever the app makes of the lost body, the client hears 408
                if not answered:
                    await answer()
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except BodyTimedOut:
            if started:
                raise
        if timed_out and not started and not answered:
            await answer()
