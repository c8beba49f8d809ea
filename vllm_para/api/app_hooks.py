"""The API server's app hooks: admin routes, the metrics refresh (installed by vllm_para.hooks).

Runs in: the API server.
"""

from __future__ import annotations

import functools

from vllm_para.api.admission import settings_of

from .metrics import RefreshOnScrape, WorkerStatsRefresher
from .routes import router, runtime_updating_enabled


def _para_enabled(args) -> bool:
    return getattr(args, "enable_para", False) or settings_of(args) is not None


def _wrap_attach(original):
    @functools.wraps(original)
    def attach_endpoint_plugins(app, *args, **kwargs):
        result = original(app, *args, **kwargs)
        if _para_enabled(app.state.args):
            app.add_middleware(RefreshOnScrape)  # worker gauges read when /metrics is scraped
            if runtime_updating_enabled():
                app.include_router(router)
        return result

    return attach_endpoint_plugins


def _wrap_init_state(original):
    @functools.wraps(original)
    async def init_endpoint_plugins_state(engine_client, state, args, *rest, **kwargs):
        result = await original(engine_client, state, args, *rest, **kwargs)
        if _para_enabled(args) and engine_client is not None:
            state.para_stats_refresher = WorkerStatsRefresher(engine_client)
        return result

    return init_endpoint_plugins_state
