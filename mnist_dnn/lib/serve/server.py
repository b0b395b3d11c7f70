"""A local server that speaks TensorFlow Serving's REST API, and the drawing page, on Starlette and uvicorn.

Routes: `GET /` (the page), `/static/...` (its files, from the package), and TensorFlow Serving's
`GET /v1/models/NAME[/versions/N][/metadata]` and `POST /v1/models/NAME[/versions/N]:predict`. Requests are parsed and
models called in worker threads, never on the event loop; a background task picks up new versions."""

import contextlib
import html
import importlib.resources
import json
import re
import socket
from collections.abc import Callable

import anyio
import anyio.to_thread
import tensorflow as tf
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mnist_dnn.lib import processes
from mnist_dnn.lib.serve import rest
from mnist_dnn.lib.errors import UsageError, first_line
from mnist_dnn.lib.config import ServeConfig
from mnist_dnn.lib.serve.classifier import ModelVersions, Servable

VERSION_HEADER = "X-Model-Version"  # on each predict answer: the version that computed it (not TensorFlow Serving's)
MODEL_PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                        r"(?:(?P<metadata>/metadata)|:(?P<method>[A-Za-z]+))?$")


def static_folder():
    return importlib.resources.files("mnist_dnn") / "static"


def _error(status: int, message: str, headers: dict | None = None) -> Response:
    return JSONResponse({"error": message}, status, headers)


async def _starlette_error(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (404 no such path or file, 405 another method; 500) as TensorFlow Serving's body."""
    if isinstance(error, HTTPException):
        return _error(error.status_code, f"{error.detail}: {request.method} {request.url.path}", error.headers)
    return _error(500, f"{type(error).__name__}: {first_line(error)}")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 (before it is read, when Content-Length says so) past `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise rest.RestError(f"the request body of {int(declared):,} bytes is over the limit of {limit:,} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise rest.RestError(f"the request body is over the limit of {limit:,} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def tf_error_message(error: tf.errors.OpError) -> str:
    """The line of a TensorFlow error that says what was wrong, without the graph's node and call stack."""
    skipped = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")
    lines = [line.strip() for line in error.message.splitlines()]
    said = [line for line in lines if line and not line.startswith(skipped)]
    return said[0] if said else first_line(error)


def run_predict(servable: Servable, body: bytes) -> str:
    """Parses a predict request, runs the signature and writes the answer (in a worker thread)."""
    request = rest.parse_json(body)
    signature = rest.signature_of(request, servable.signatures)
    inputs, row_format = rest.predict_inputs(request, signature)
    try:
        outputs = signature.run(inputs)
    except tf.errors.InvalidArgumentError as e:  # e.g. a {"b64": ...} value that is not an image
        raise rest.RestError(tf_error_message(e)) from None
    except ValueError as e:  # the LiteRT interpreter's refusals
        raise rest.RestError(first_line(e)) from None
    # allow_nan (not JSONResponse): TensorFlow Serving writes a NaN probability as NaN rather than failing the request
    return json.dumps(rest.predict_response(outputs, row_format), separators=(",", ":"))


class ModelServer:
    """The routes' state: the model's versions, the worker threads, the limits."""

    def __init__(self, config: ServeConfig, versions: ModelVersions, say: Callable[[str], None],
                 after_switch: Callable[[], None]):
        self.config, self.versions, self.say, self.after_switch = config, versions, say, after_switch
        self.model_calls = anyio.CapacityLimiter(config.model_threads)

    def servable(self, name: str, version: str | None) -> Servable:
        """The servable a request names; taken once, so a switch of version never changes it mid-request."""
        servable = self.versions.current
        if name != self.config.model_name:
            raise rest.RestError(f"Servable not found for request: Latest({name})", 404)
        if version is not None and int(version) != servable.version:
            raise rest.RestError(f"Servable not found for request: Specific({name}, {version})", 404)
        return servable

    async def models(self, request: Request) -> Response:
        match = MODEL_PATH.match(request.path_params["path"])
        try:
            if not match or (request.method == "GET") != (match["method"] is None) or \
                    (match["metadata"] and request.method != "GET"):
                raise rest.RestError(f"Malformed request: {request.method} {request.url.path}", 404)
            if request.method == "GET" and not match["metadata"]:
                failed = {v: error for v, (_, error) in self.versions.failed.items()}
                return JSONResponse(rest.status(match["name"], self.servable(match["name"], None), failed,
                                               match["version"] and str(int(match["version"]))))
            servable = self.servable(match["name"], match["version"])
            if request.method == "GET":
                return JSONResponse(rest.metadata(match["name"], servable))
            if match["method"] != "predict":
                raise rest.RestError(f"{match['method']} is not supported: this server answers predict only")
            body = await read_body(request, self.config.max_request_bytes)
            answer = await anyio.to_thread.run_sync(run_predict, servable, body, limiter=self.model_calls)
            return Response(answer, media_type="application/json", headers={VERSION_HEADER: str(servable.version)})
        except rest.RestError as e:
            return _error(e.status, str(e))
        except Exception as e:  # a failure of the server's own: the client still gets TensorFlow Serving's body
            self.say(f"error answering {request.method} {request.url.path}: {type(e).__name__}: {first_line(e)}")
            return _error(500, f"{type(e).__name__}: {first_line(e)}")

    async def page(self, request: Request) -> Response:
        text = (static_folder() / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(text.replace("{{MODEL_NAME}}", html.escape(self.config.model_name)))

    async def watch_versions(self) -> None:
        """Every poll interval, loads a newer version (in a thread) and switches to it."""
        while True:
            await anyio.sleep(self.config.file_system_poll_wait_seconds)
            try:
                if await anyio.to_thread.run_sync(self.versions.refresh):
                    self.after_switch()
            except Exception as e:  # e.g. the folder vanished: keep serving what is loaded, look again later
                self.say(f"cannot look for new versions in {self.versions.model_dir}: {type(e).__name__}: "
                         f"{first_line(e)}")

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        async with anyio.create_task_group() as tasks:
            if self.versions.watched and self.config.file_system_poll_wait_seconds > 0:
                tasks.start_soon(self.watch_versions)
            yield
            tasks.cancel_scope.cancel()


def create_app(config: ServeConfig, versions: ModelVersions, say: Callable[[str], None] = lambda line: None,
               after_switch: Callable[[], None] = lambda: None):
    """The Starlette app; `after_switch` is called once a new version is served."""
    state = ModelServer(config, versions, say, after_switch)
    routes = [Route("/", state.page),
              Route("/v1/models/{path:path}", state.models, methods=["GET", "POST"]),
              Mount("/static", StaticFiles(directory=str(static_folder())), name="static")]
    return Starlette(routes=routes, lifespan=state.lifespan,
                     exception_handlers={HTTPException: _starlette_error, Exception: _starlette_error})


# --- Running it --------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one error line (address in use, not an address of this machine)."""
    sock = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                            flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as e:
        if sock is not None:
            sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}; pass another --host or --port") from None
    return sock


def uvicorn_server(app) -> uvicorn.Server:
    """uvicorn for `app`: no access log (one line per request), the process's logging left as it is."""
    return uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                                         server_header=False, timeout_graceful_shutdown=5, lifespan="on"))


def run(config: ServeConfig, say: Callable[[str], None], on_start, after_switch: Callable[[], None]) -> None:
    """Serves the newest version of `config.model_dir` until Ctrl-C or SIGTERM, then returns once the requests under
    way are answered: `on_start(servable, port)` once it listens, `after_switch()` after each newer version loads."""
    versions = ModelVersions(config.model_dir, say)
    sock = bind(config.host, config.port)
    on_start(versions.current, sock.getsockname()[1])
    server = uvicorn_server(create_app(config, versions, say, after_switch=after_switch))
    # uvicorn raises the signal it caught again once stopped (a traceback for Ctrl-C, death by
    # SIGTERM); handlers that do nothing make both a clean return.
    try:
        with processes.signals_to(lambda *_: None):
            server.run(sockets=[sock])
    finally:
        sock.close()
