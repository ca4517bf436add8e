"""The web app: the page, its JSON, a run's files, and the guards in front of them (FastAPI).

Guards, in the order a request meets them:
- bound to localhost (the default), a request must name localhost in its Host header (a page
  elsewhere cannot reach the app through DNS rebinding); bound elsewhere, a token is required
  (`?token=` once, then a cookie, or `Authorization: Bearer`);
- every request that changes something (POST) must come from the app's own page: an Origin,
  if sent, equal to the app's, `Sec-Fetch-Site`, if sent, same-origin, and the page's CSRF token
  in `X-CSRF-Token` (a page of another origin can neither read nor send it);
- files are served from inside a run directory only: resolved (links followed) and refused
  when they land outside it; the page's own files are a fixed list.
"""

from __future__ import annotations

import hmac
import ipaddress
import mimetypes
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tunesmith.config import redact
from tunesmith.errors import UserError
from tunesmith.webui import launch, runs

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
TOKEN_COOKIE = "tunesmith_ui_token"
CSRF_HEADER = "x-csrf-token"
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css"}
SAFE_METHODS = {"GET", "HEAD"}
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# A run's files (report.html holds the user's data): an opaque origin that can reach nothing of the app.
FILE_POLICY = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'"


def is_loopback(host: str) -> bool:
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Settings:
    """What the app serves and how it is guarded."""

    roots: list[Path]  # the output folders whose runs it shows and launches into
    examples: Path | None = None  # the folder of example configs a launch can start from
    host: str = DEFAULT_HOST
    token: str | None = None  # required on every request when set (always set off localhost)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def __post_init__(self) -> None:
        self.roots = [Path(root).expanduser().resolve() for root in self.roots]
        if not is_loopback(self.host) and not self.token:
            raise UserError(
                f"--host {self.host}: the app is reachable from other machines; give it a --token"
            )


def _host_name(header: str) -> str:
    """The name of a Host header ('127.0.0.1:7860' -> 127.0.0.1, '[::1]:7860' -> ::1)."""
    if header.startswith("["):
        return header[1:].split("]")[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _static(name: str) -> str:
    return resources.files("tunesmith.webui").joinpath("static").joinpath(name).read_text(encoding="utf-8")


def create_app(settings: Settings, launcher: launch.Launcher | None = None) -> Any:
    """The FastAPI app over `settings.roots`; `launcher` starts and stops the runs."""
    from fastapi import FastAPI, Query, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

    launcher = launcher or launch.Launcher()
    app = FastAPI(title="tunesmith ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.launcher = launcher
    app.state.settings = settings

    def refuse(status: int, message: str) -> Any:
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        host = request.headers.get("host", "")
        if is_loopback(settings.host) and not is_loopback(_host_name(host)):
            return refuse(403, f"host {host!r} refused: the app answers to localhost only")
        set_cookie = False
        if settings.token:
            given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
            bearer = request.headers.get("authorization", "")
            if bearer.lower().startswith("bearer "):
                given = bearer[7:]
            if not hmac.compare_digest(given.encode(), settings.token.encode()):
                return refuse(401, "a token is required: open the address `tunesmith ui` printed")
            set_cookie = request.query_params.get("token") is not None
        if request.method not in SAFE_METHODS:
            origin = request.headers.get("origin")
            if origin is not None and origin != f"{request.url.scheme}://{host}":
                return refuse(403, f"cross-site request from {origin} refused")
            if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                return refuse(403, "cross-site request refused")
            if not hmac.compare_digest(request.headers.get(CSRF_HEADER, "").encode(), settings.csrf.encode()):
                return refuse(403, "missing or wrong CSRF token: reload the page")
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", PAGE_POLICY)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        if set_cookie and settings.token:
            response.set_cookie(TOKEN_COOKIE, settings.token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> Any:
        return refuse(400, redact(str(exc)))

    @app.exception_handler(Exception)
    async def failure(_: Request, exc: Exception) -> Any:
        # A library's error (a model that does not load, a bug of ours): one line for the page.
        return refuse(500, redact(f"{type(exc).__name__}: {exc}"))

    def ref(root: int, name: str) -> runs.RunRef:
        try:
            return runs.run_ref(settings.roots, root, name)
        except UserError as exc:
            from fastapi import HTTPException

            raise HTTPException(404, str(exc)) from None

    def process(path: Path) -> tuple[int | None, str | None]:
        """(exit code, pending) of the latest process the page started for the run (None, None: none)."""
        job = launcher.job(path)
        return (job.exit_code, job.pending) if job is not None else (None, None)

    def job_info(path: Path) -> dict[str, Any] | None:
        job = launcher.job(path)
        if job is None:
            return None
        return {
            "command": job.command,
            "exit_code": job.exit_code,
            "output": job.output(),
            "log": str(job.log),
        }

    @app.get("/", response_class=HTMLResponse)
    def page() -> Any:
        return HTMLResponse(_static("index.html").replace("{{csrf}}", settings.csrf))

    @app.get("/favicon.ico")
    def favicon() -> Any:
        return Response(status_code=204)

    @app.get("/static/{name}")
    def static(name: str) -> Any:
        if name not in STATIC_FILES:
            return refuse(404, "not found")
        return Response(_static(name), media_type=STATIC_FILES[name])

    @app.get("/api/runs")
    def list_runs() -> dict[str, Any]:
        found = runs.find_runs(settings.roots)
        listed = [runs.summarize(r, *process(r.path)) for r in found]
        known = {r.path.resolve() for r in found}
        # Runs the page started that have no directory yet (loading) or never got one (an error).
        for path, job in launcher.jobs.items():
            if path in known or path.parent not in settings.roots:
                continue
            state = job.pending or "failed"
            listed.append(
                {
                    "id": f"{settings.roots.index(path.parent)}/{path.name}",
                    "name": path.name,
                    "state": state,
                    "error": next((line for line in reversed(job.output()) if line.strip()), ""),
                    "created": "",
                    "step": 0,
                    "headline": {},
                }
            )
        return {"roots": [str(r) for r in settings.roots], "runs": listed}

    @app.get("/api/runs/{root}/{name}")
    def run_page(root: int, name: str) -> dict[str, Any]:
        path = settings.roots[root] / name if 0 <= root < len(settings.roots) else None
        job = launcher.job(path) if path is not None else None
        if job is not None and not (path is not None and path.is_dir()):
            state = job.pending or "failed"
            return {"id": f"{root}/{name}", "name": name, "state": state, "job": job_info(job.run_dir)}
        found = ref(root, name)
        return {**runs.detail(found, *process(found.path)), "job": job_info(found.path)}

    @app.get("/api/compare")
    def compare(run: list[str] = Query(default_factory=list)) -> dict[str, Any]:
        refs = []
        for item in run:
            root, _, name = item.partition("/")
            refs.append(ref(int(root) if root.isdigit() else -1, name))
        return runs.compare(refs, launcher.processes())

    @app.get("/runs/{root}/{name}/files/{path:path}")
    def run_file(root: int, name: str, path: str) -> Any:
        run_dir = ref(root, name).path.resolve()
        target = (run_dir / path).resolve()
        if not target.is_relative_to(run_dir) or not target.is_file():
            return refuse(404, "no such file in this run")
        media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if media.startswith("text/") or media == "application/json":
            media += "; charset=utf-8"
        return FileResponse(target, media_type=media, headers={"Content-Security-Policy": FILE_POLICY})

    @app.get("/api/schema")
    def schema() -> dict[str, Any]:
        bases = launch.list_bases(settings.examples, settings.roots)
        return {
            "fields": launch.schema_fields(),
            "bases": [{"id": b.id, "label": b.label, "path": launch.shown_path(b.path)} for b in bases],
            "roots": [str(r) for r in settings.roots],
        }

    @app.get("/api/bases")
    def base_values(base: str) -> dict[str, Any]:
        from tunesmith.config import load_config

        found = launch.find_base(base, settings.examples, settings.roots)
        return {"values": launch.form_values(load_config(found.path)), "path": launch.shown_path(found.path)}

    def plan_from(body: dict[str, Any], check_run_dir: bool = True) -> launch.Plan:
        found = launch.find_base(str(body.get("base", "")), settings.examples, settings.roots)
        values = {str(k): str(v) for k, v in (body.get("values") or {}).items()}
        overrides = launch.changed_overrides(found.path, values)
        overrides += launch.extra_overrides(str(body.get("extra") or ""))
        return launch.plan_launch(found.path, overrides, settings.roots, check_run_dir)

    def plan_json(plan: launch.Plan) -> dict[str, Any]:
        run_dir = plan.run_dir.expanduser().resolve()
        return {
            "command": plan.command,
            "overrides": plan.overrides,
            "run": f"{settings.roots.index(run_dir.parent)}/{run_dir.name}",
        }

    @app.post("/api/launch/plan")
    def plan(body: dict[str, Any]) -> dict[str, Any]:
        return plan_json(plan_from(body))

    @app.post("/api/launch/preflight")
    def preflight(body: dict[str, Any]) -> dict[str, Any]:
        return launch.preflight(plan_from(body, check_run_dir=False))

    @app.post("/api/launch/start")
    def start(body: dict[str, Any]) -> dict[str, Any]:
        planned = plan_from(body)
        job = launcher.start(planned)
        return {**plan_json(planned), "pid": job.process.pid}

    @app.post("/api/runs/{root}/{name}/stop")
    def stop(root: int, name: str) -> dict[str, Any]:
        found = ref(root, name)
        return {"signalled": launcher.stop(found.path)}

    @app.post("/api/runs/{root}/{name}/resume")
    def resume(root: int, name: str, body: dict[str, Any]) -> dict[str, Any]:
        found = ref(root, name)
        job = launcher.resume(found.path, launch.extra_overrides(str(body.get("extra") or "")))
        return {"command": job.command, "pid": job.process.pid}

    return app


def serve_ui(
    roots: Sequence[str | Path],
    examples: str | Path | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    on_ready: Any = None,
) -> None:
    """Run the app until interrupted. Off localhost without a token, one is made up; `on_ready(url)`
    is told the address to open (with the token in it)."""
    import uvicorn

    if not is_loopback(host) and not token:
        token = secrets.token_urlsafe(24)
    settings = Settings([Path(r) for r in roots], Path(examples) if examples else None, host, token)
    shown = "localhost" if host in ("127.0.0.1", "localhost") else host
    if host in ("0.0.0.0", "::"):  # every address of this machine: its name reaches one of them
        shown = socket.gethostname()
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    if on_ready is not None:
        on_ready(url)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False)
