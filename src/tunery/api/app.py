"""FastAPI app factory: settings and shared services on app.state, one router per resource."""

from __future__ import annotations

import importlib

from fastapi import FastAPI

from tunery import __version__
from tunery.api.errors import install_error_handlers
from tunery.settings import Settings, get_settings

# Route modules, each exposing `router` (mounted under /v1). Listed here, not discovered, so a
# missing module is an import error at start-up rather than a silently absent endpoint.
ROUTE_MODULES: list[str] = ["tunery.api.routes.files", "tunery.api.routes.fine_tuning",
                              "tunery.api.routes.models",
                              "tunery.api.routes.chat", "tunery.api.routes.completions",
                              "tunery.api.routes.guards"]


def create_app(settings: Settings | None = None, *, exposed: bool = False, public: bool | None = None) -> FastAPI:
    """`exposed`: listening beyond loopback without --insecure, so a moment without API keys refuses
    every request. `public` (default: exposed): callers may not name local directories as models
    without keys either (true for any non-loopback server, --insecure or not)."""
    settings = (settings or get_settings()).ensure_dirs()
    from tunery.quiet import quiet_libraries

    quiet_libraries()  # the server's first model load prints no tqdm bars or library warnings (issue 11)
    app = FastAPI(title="tunery", version=__version__,
                  description="OpenAI-compatible fine-tuning and inference on your own hardware.")
    app.state.settings = settings
    app.state.exposed = exposed
    app.state.public = exposed if public is None else public
    install_error_handlers(app)
    for name in ROUTE_MODULES:
        module = importlib.import_module(name)
        app.include_router(module.router, prefix="/v1")
    from tunery.api.dashboard import mount_dashboard

    mount_dashboard(app)  # the web pages at / and their read-only /tunery/v1 routes

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"status": "ok", "version": __version__}

    return app
