"""The composition root: one server's store, backends, scheduler and services, and the APIs over them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from modelyard import __version__
from modelyard.api.anthropic.routes import ROUTES as ANTHROPIC_ROUTES
from modelyard.api.auth import KeyRing, auth_middleware, insecure_bind_warning
from modelyard.api.guard import guard_middleware
from modelyard.api.http import App, handle_http_exception, handle_modelyard_error, handle_unexpected
from modelyard.api.limits import body_timeout_middleware
from modelyard.api.logs import observe_middleware
from modelyard.api.metrics import MeteredInference, MeteredScheduler, Metrics, metrics_endpoint
from modelyard.api.ollama.encode import UtcClock
from modelyard.api.ollama.routes import ROUTES
from modelyard.api.openai.routes import ROUTES as OPENAI_ROUTES
from modelyard.api.openapi import openapi_endpoint
from modelyard.api.shutdown import Drain
from modelyard.config import Settings
from modelyard.errors import ModelyardError
from modelyard.runtime.catalog import ModelCatalog
from modelyard.runtime.plugins import Backends, build_plugin_manager
from modelyard.store.bundled import install_bundled_models
from modelyard.store.formats import Formats
from modelyard.store.local import ModelStore
from modelyard.store.manage import Management

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, extra_plugins: tuple[object, ...] = ()) -> Litestar:
    """A server with its own store, backends and scheduler (no module state: tests make many)."""
    settings = settings or Settings.from_env()
    manager = build_plugin_manager(extra_plugins, trace=settings.trace_hooks)
    store = ModelStore(settings.models, Formats.discover(manager))
    backends = Backends.discover(manager, settings.backends)
    catalog = ModelCatalog(store, backends)
    drain = Drain(settings.shutdown_timeout)
    scheduler = MeteredScheduler(
        settings.keep_alive,
        num_parallel=settings.num_parallel,
        max_loaded_models=settings.max_loaded_models,
        max_queue=settings.max_queue,
        drain=drain,
    )
    metrics = Metrics(scheduler)
    # Outermost first, around the router: every answer, the guard's, the key check's and a 404's included,
    # is logged and counted.
    middleware = [
        observe_middleware([metrics.observe_http]),
        body_timeout_middleware(settings.body_timeout),
        guard_middleware(settings),
    ]
    if settings.api_keys is not None:
        middleware.append(auth_middleware(settings, KeyRing(settings.api_keys)))  # a broken file stops here

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await asyncio.to_thread(install_bundled_models, store, settings.bundled_models)
        await backends.start()
        log.info(
            "modelyard %s: models in %s, backends: %s",
            __version__,
            store.root,
            ", ".join(b.name for b in backends.backends) or "none",
        )
        if warning := insecure_bind_warning(settings):
            log.warning(warning)
        try:
            yield
        finally:
            await scheduler.close()  # every model unloaded, once the running requests are done
            await backends.close()
            log.info("models unloaded")

    return App(
        route_handlers=[*ROUTES, *OPENAI_ROUTES, *ANTHROPIC_ROUTES, metrics_endpoint, openapi_endpoint],
        exception_handlers={
            ModelyardError: handle_modelyard_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        lifespan=[lifespan],
        outer_middleware=middleware,
        state=State(
            {
                "settings": settings,
                "store": store,
                "backends": backends,
                "scheduler": scheduler,
                "catalog": catalog,
                "inference": MeteredInference(
                    catalog,
                    backends,
                    scheduler,
                    settings.context_length,
                    metrics=metrics,
                    drain=drain,
                    log_prompts=settings.log_prompts,
                ),
                "metrics": metrics,
                "drain": drain,  # started by `modelyard serve` at SIGTERM or SIGINT
                "management": Management(store, backends, scheduler, prune=not settings.noprune),
                "registry": None,  # see registry()
                "plugin_manager": manager,
                "clock": UtcClock(),  # timestamps of Ollama's chunks
            }
        ),
        openapi_config=None,
        logging_config=None,  # the server's log is set up by `modelyard serve` (text or JSON lines)
        request_max_body_size=settings.max_body_size,  # /api/blobs sets its own: none
        debug=False,
    )
