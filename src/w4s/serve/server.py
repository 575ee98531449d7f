"""Start the server: check the sandbox's isolation, bind, run the app under uvicorn until stopped."""

from __future__ import annotations

import asyncio
import logging
import socket

from w4s.errors import ConfigError, InfrastructureError, SandboxUnavailable
from w4s.llm.config import EndpointConfig
from w4s.sandbox.config import SandboxConfig
from w4s.serve.config import ServeConfig
from w4s.tracking.store import TrackingConfig

log = logging.getLogger(__name__)


def check_sandbox(cfg: SandboxConfig) -> list[dict]:
    """Log what ``w4s sandbox doctor`` finds; refuse a degraded sandbox unless ``cfg.allow_degraded``."""
    from w4s.sandbox import doctor, isolation

    isolation.backend(cfg)  # refuses now when this machine cannot give the isolation asked for
    checks = doctor.diagnose(cfg)
    missing = [c.layer for c in checks if not c.ok]
    if missing:
        if not cfg.allow_degraded:
            raise SandboxUnavailable(
                f"the sandbox is degraded here (missing: {', '.join(missing)}); run `w4s sandbox doctor`, or pass "
                "--allow-degraded-sandbox to serve anyway"
            )
        log.warning(
            "SANDBOX DEGRADED: serving without %s (allowed by --allow-degraded-sandbox)", ", ".join(missing)
        )
    else:
        log.info("sandbox isolation: full (%s)", ", ".join(c.layer for c in checks))
    for check in checks:
        log.debug("sandbox %s: %s (%s)", check.layer, "ok" if check.ok else "MISSING", check.detail)
    return doctor.as_dicts(checks)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP (with 0, every
    # keep-alive reply would wait ~40 ms on delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def event_loop_factory():
    """uvloop's event loop where it is installed (the ``serve`` extra brings it, with httptools for
    uvicorn's HTTP parsing), else asyncio's own. The server's one loop also drives every sandbox's
    channels and the executor's connections: see docs/performance.md for what the two save."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve(
    serve_cfg: ServeConfig,
    executor: EndpointConfig | None = None,
    sandbox: SandboxConfig | None = None,
    tracking: TrackingConfig | None = None,
) -> None:
    """Run the server until SIGINT/SIGTERM (the requests in flight finish first)."""
    import uvicorn

    from w4s import api
    from w4s.serve.app import create_app

    for task, path in serve_cfg.workflow_paths().items():
        api.load_workflow(path, task)  # an unknown task or a missing file: refused before anything starts
    sandbox = sandbox or SandboxConfig()
    check_sandbox(sandbox)
    fatal: list[BaseException] = []
    server = None

    def stop(exc: BaseException) -> None:  # the workflows cannot be loaded: stop serving, say why below
        fatal.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(serve_cfg, executor, sandbox, tracking, on_fatal=stop)
    sock = bind(serve_cfg.host, serve_cfg.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=serve_cfg.request_timeout_s + 5,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    log.info("listening on http://%s:%d (OpenAI base URL http://%s:%d/v1)", host, port, host, port)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(server.serve(sockets=[sock]))
    if fatal:
        if isinstance(fatal[0], ConfigError | InfrastructureError):
            raise fatal[0]
        raise InfrastructureError(
            f"the workflows could not be loaded ({type(fatal[0]).__name__}: {fatal[0]}); see the log above"
        )
    if not server.started:
        raise InfrastructureError("the server did not start; see the log above")
