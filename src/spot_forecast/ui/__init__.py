"""The web page at ``/ui``: a series' recent history, its forecast fan chart and a cheapest window.

The page is static HTML, CSS and JavaScript in this folder, with no external scripts or fonts, so
it works without internet access. It reads everything through the JSON API (``/series``,
``/history``, ``/forecast``, ``/cheapest_window``) of the service that mounts it.
"""

from __future__ import annotations

from pathlib import Path

UI_FOLDER = Path(__file__).resolve().parent
#: The files the page is made of, with their media types; nothing else in the folder is served.
PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def create_app():
    """A Starlette app that serves the page's files, ``index.html`` at its root."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, PlainTextResponse
    from starlette.routing import Route

    async def page_file(request: Request):
        name = request.path_params.get("name") or "index.html"
        if name not in PAGE_FILES:
            return PlainTextResponse(f"{name} not found", status_code=404)
        return FileResponse(UI_FOLDER / name, media_type=PAGE_FILES[name],
                            headers={"cache-control": "no-cache"})

    return Starlette(routes=[Route("/", page_file), Route("/{name}", page_file)])
