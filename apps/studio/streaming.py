"""Downloads that stream under daphne with flat memory.

Django's ASGI handler iterates a response with `async for`; given a sync iterator (every
FileResponse, a generator) it first turns the whole iterator into a list, so a 5 GB model export
sat in the web process's memory before its first byte was sent. These responses keep their sync
iterator for WSGI and the test client, and under ASGI read one chunk at a time in a worker
thread, and under daphne only while the client keeps up (puyu_site/bodylimit.py `Flow`: daphne
itself never waits for a slow client).
"""
from __future__ import annotations

import asyncio

from django.http import FileResponse, StreamingHttpResponse

_END = object()


class _ThreadedAsyncIteration:
    async def __aiter__(self):
        from puyu_site.bodylimit import current_flow

        flow = current_flow.get()  # daphne: wait while the client's socket buffer is full
        iterator = self._iterator
        if self.is_async:  # already async: nothing to offload
            async for part in iterator:
                yield self.make_bytes(part)
            return
        while True:
            if flow is not None:
                await flow.writable()
            part = await asyncio.to_thread(next, iterator, _END)
            if part is _END:
                return
            yield self.make_bytes(part)


class StreamingFileResponse(_ThreadedAsyncIteration, FileResponse):
    """FileResponse (Content-Length, Content-Disposition, type from the name) that streams under
    ASGI, in the handler's 64 KiB blocks."""


class StreamingIteratorResponse(_ThreadedAsyncIteration, StreamingHttpResponse):
    """A generator's chunks (a tar being built), produced in a worker thread under ASGI."""
