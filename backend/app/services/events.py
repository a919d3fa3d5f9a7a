"""Server-sent events for one job: poll the store, send the job whenever it changed, stop when final."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from .jobs import TERMINAL, JobStore

KEEPALIVE_S = 15.0


async def job_events(store: JobStore, job_id: str, kind: str, poll_s: float, max_s: float = 3600.0
                     ) -> AsyncIterator[str]:
    last = None
    last_sent = time.monotonic()
    ends_at = last_sent + max_s
    while True:
        job = await asyncio.to_thread(store.get, job_id, kind)
        if job is None:
            yield "event: error\ndata: {\"detail\": \"the job was deleted\", \"field\": null}\n\n"
            return
        text = json.dumps(job)
        if text != last:
            yield f"data: {text}\n\n"
            last, last_sent = text, time.monotonic()
        elif time.monotonic() - last_sent > KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if job["status"] in TERMINAL or time.monotonic() > ends_at:
            return
        await asyncio.sleep(poll_s)
