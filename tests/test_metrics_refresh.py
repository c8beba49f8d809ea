"""The worker gauges are read when /metrics is scraped, never on a timer (a 1 Hz
`para_stats` poll slowed a busy 2-core server): one call per scrape at most every
MIN_REFRESH_SECONDS, a hanging or failing engine never hangs or fails the scrape, and
nothing but GET /metrics triggers a call (the served end to end: tests/test_server.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from vllm_para.api import metrics as M

STATS = {"pages_in_use": 3, "pages_capacity": 64, "buffer_bytes": 10, "adapter_host_bytes": 20,
         "adapters_in_host_memory": 2, "adapter_device_bytes": 30}


class FakeClient:
    """Stands in for AsyncLLM's `collective_rpc` only (a unit test of the refresher)."""

    def __init__(self, behaviour="ok") -> None:
        self.vllm_config = None
        self.behaviour = behaviour
        self.calls = 0

    async def collective_rpc(self, method):
        assert method == "para_stats"
        self.calls += 1
        if self.behaviour == "hang":
            await asyncio.sleep(3600)
        if self.behaviour == "fail":
            raise RuntimeError("engine dead")
        return [dict(STATS)]


def _gauge(g) -> float:
    return g._value.get()


def test_refresh_is_throttled_and_sets_the_gauges(monkeypatch):
    async def run():
        client = FakeClient()
        r = M.WorkerStatsRefresher(client)
        await asyncio.gather(r.refresh(), r.refresh(), r.refresh())  # concurrent scrapes: one call
        assert client.calls == 1 and _gauge(M.PAGES_IN_USE) == 3 and _gauge(M.ADAPTER_DEVICE_BYTES) == 30
        monkeypatch.setattr(M, "MIN_REFRESH_SECONDS", 0.0)
        await r.refresh()
        assert client.calls == 2

    asyncio.run(run())


def test_a_hanging_or_failing_engine_keeps_the_last_values(monkeypatch):
    monkeypatch.setattr(M, "REFRESH_TIMEOUT_SECONDS", 0.05)
    monkeypatch.setattr(M, "MIN_REFRESH_SECONDS", 0.0)

    async def run():
        M.PAGES_IN_USE.set(7)
        for behaviour in ("hang", "fail"):
            await M.WorkerStatsRefresher(FakeClient(behaviour)).refresh()  # returns, raises nothing
            assert _gauge(M.PAGES_IN_USE) == 7

    asyncio.run(run())


def test_only_a_metrics_scrape_refreshes():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope.get("path"))

    async def run():
        client = FakeClient()
        state = SimpleNamespace(para_stats_refresher=M.WorkerStatsRefresher(client))
        mw = M.RefreshOnScrape(app)
        owner = SimpleNamespace(state=state)
        for path in ("/v1/completions", "/health", "/v1/models"):
            await mw({"type": "http", "path": path, "app": owner}, None, None)
        assert client.calls == 0
        await mw({"type": "http", "path": "/metrics", "app": owner}, None, None)
        assert client.calls == 1
        await mw({"type": "http", "path": "/metrics", "app": SimpleNamespace(state=SimpleNamespace())}, None, None)
        await mw({"type": "lifespan", "app": owner}, None, None)
        assert client.calls == 1  # no refresher on that app, and not an HTTP request
        assert seen == ["/v1/completions", "/health", "/v1/models", "/metrics", "/metrics", None]  # all passed on

    asyncio.run(run())
