"""Console load time: Chromium (Debian's, /usr/bin/chromium) opens the console of a server holding
10,000 jobs; the time from navigation to the page showing its data (the queues table with the
counts; the job list's first page of 50), median of a few fresh loads. The floor is the same browser
loading the page's stylesheet alone from the same server: a navigation's own cost."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
from playwright.async_api import Browser, async_playwright

from bench.common import Failed, Figure, Run, Target, make_app, median, start_app, stop_app

CHROMIUM = Path("/usr/bin/chromium")
JOBS = 10_000
LOADS = 5
TARGET_MS = 1000.0


async def _fill(base: str) -> None:
    """JOBS jobs scheduled far ahead: they stay in the database and nothing runs them."""
    async with aiohttp.ClientSession() as session:
        for _ in range(JOBS // 1000):
            body = {"requests": [{"kind": "noop", "runAt": "2999-01-01T00:00:00Z"}] * 1000}
            async with session.post(f"{base}/v1/jobs:batchEnqueue", json=body) as reply:
                if reply.status != 200:
                    raise Failed(f"filling the database: HTTP {reply.status}")


async def _load_ms(browser: Browser, url: str, ready: str) -> float:
    """Milliseconds from navigation to `ready` (a JavaScript condition) in a fresh context."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        start = time.perf_counter()
        await page.goto(url)
        await page.wait_for_function(ready, timeout=30_000)
        return (time.perf_counter() - start) * 1000
    finally:
        await context.close()


async def measure(run: Run) -> None:
    if not CHROMIUM.exists():  # noqa: ASYNC240 - one stat before anything starts
        raise Failed(f"{CHROMIUM} is missing (make chromium installs it)")
    app = make_app(run.settings, await run.db("console"), http_listen="127.0.0.1:0")
    await start_app(app)
    try:
        assert app.gateway is not None
        base = f"http://127.0.0.1:{app.gateway.port}"
        await _fill(base)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            queues = "() => document.querySelector('tbody td')?.textContent === '10000'"
            jobs = "() => document.querySelectorAll('tbody tr').length === 50"
            css = "() => document.readyState === 'complete'"
            figures = {name: median([await _load_ms(browser, url, ready) for _ in range(LOADS)])
                       for name, url, ready in (("queues", f"{base}/", queues), ("jobs", f"{base}/#/jobs", jobs),
                                                ("floor", f"{base}/console/console.css", css))}
            await browser.close()
    finally:
        await stop_app(app)
    floor = figures["floor"]
    run.add(Figure("console_queues_ms", f"Console queues page, {JOBS:,} jobs", "ms", figures["queues"], floor,
                   "the stylesheet alone", (Target(TARGET_MS, at_most=True),)))
    run.add(Figure("console_jobs_ms", f"Console job list (50 of {JOBS:,})", "ms", figures["jobs"], floor,
                   "the stylesheet alone", (Target(TARGET_MS, at_most=True),)))
