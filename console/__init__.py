"""The operator console (``/console``) and the API docs (``/docs``, ``/redoc``), served without a CDN.

The console is server-rendered HTML over the HTTP API itself: every page reads, and every form writes,
through the same ``/v1`` routes a client calls, in process, with the signed-in key's session token. What a
role may see and do is therefore exactly what the API allows it. Its templates and assets ship in this
package; Swagger UI and ReDoc come from the ``fastapi-offline`` package.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from console.pages import EXCEPTION_HANDLERS, router

DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
CONSOLE_ASSETS = Path(__file__).parent / "static"
#: The docs' own inline start-up scripts run; images, fonts and fetches stay on this origin (ReDoc's bundle
#: would otherwise load its footer logo from its vendor's CDN).
DOCS_CSP = {"Content-Security-Policy": "img-src 'self' data:; font-src 'self' data:; connect-src 'self'"}


def install(app: FastAPI) -> None:
    """Add the console and the offline API docs to ``app`` (built with ``docs_url=None, redoc_url=None``)."""
    app.mount("/docs/assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.mount("/console/static", StaticFiles(directory=CONSOLE_ASSETS), name="console-static")
    app.include_router(router)
    for exc, handler in EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exc, handler)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} — API", swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css", swagger_favicon_url="/docs/assets/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
        )  # fmt: skip
        page.headers.update(DOCS_CSP)
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=app.openapi_url, title=f"{app.title} — API reference",
            redoc_js_url="/docs/assets/redoc.standalone.js", redoc_favicon_url="/docs/assets/favicon.png",
            with_google_fonts=False,
        )  # fmt: skip
        page.headers.update(DOCS_CSP)
        return page
