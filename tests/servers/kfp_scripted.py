"""A scripted Kubeflow Pipelines API server: the permitted fake at the cluster boundary.

Real HTTP on loopback, in its own process. It implements just enough of the KFP v2beta1 REST API for
``kfp.Client`` 2.x to work (healthz; pipeline upload, versions, list and get; experiments create, list
and get; runs create, list and get; recurring runs create, list and get), keeps what was created in
memory, and records every ``/apis/`` request it got (method, path, query, headers, body), refused ones
included, so tests can check exactly what a client sent.

Run: python -m tests.servers.kfp_scripted --port 0 [--token T] [--multi-user]   (prints "PORT <n>" when ready)
Control (never recorded, never needs the token):
  GET  /_requests   every recorded request, oldest first
  POST /_control    {"require_token": str | null, "multi_user": bool, "reset": bool (forget all state and
                     requests), "faults": [{"method": "POST", "path": regex, "status": 404, "message": text,
                     "count": 1}] (answered instead of the real thing, one per matching request, in order),
                     "set_run": {"run_id": id, "state": "SUCCEEDED", "finished_at": RFC3339}}

Answers as KFP does: 401 when a token is required and the request's ``Authorization: Bearer`` is missing
or wrong; 404 for unknown pipeline, version, experiment, run or recurring run ids; 409 for a second
pipeline, version or experiment of the same name; 400 for an upload that is not a pipeline spec or a
recurring run whose cron does not have 6 fields. Errors are ``{"error", "code", "message"}`` like grpc-gateway's.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/apis/v2beta1"
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13}

LOCK = threading.Lock()
STATE: dict = {}


def _reset(keep_settings: bool = True) -> None:
    settings = {k: STATE.get(k) for k in ("require_token", "multi_user")} if keep_settings else {}
    STATE.clear()
    STATE.update(
        require_token=settings.get("require_token"),
        multi_user=bool(settings.get("multi_user")),
        faults=[],
        requests=[],
        pipelines={},
        versions={},
        experiments={},
        runs={},
        recurring_runs={},
        clock=0,
    )


_reset(keep_settings=False)


class HttpError(Exception):
    """Answer ``status`` with a grpc-gateway style error body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _now() -> str:
    """An RFC3339 time that increases by one second per object, so ``created_at desc`` is well defined."""
    STATE["clock"] += 1
    base = datetime(2025, 1, 1, tzinfo=UTC).timestamp() + STATE["clock"]
    return datetime.fromtimestamp(base, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_id() -> str:
    return str(uuid.uuid4())


def _filtered(items: list[dict], query: dict) -> list[dict]:
    """Apply KFP's ``filter`` (EQUALS predicates), ``sort_by`` and ``page_size`` to a listing."""
    raw = query.get("filter", [""])[0]
    if raw:
        try:
            predicates = json.loads(raw).get("predicates", [])
        except (ValueError, AttributeError):
            raise HttpError(400, f"invalid filter {raw!r}") from None
        for predicate in predicates:
            if predicate.get("operation") not in (1, "EQUALS"):
                raise HttpError(400, f"unsupported filter operation {predicate.get('operation')!r}")
            key = predicate.get("key")
            wanted = next(
                (predicate[k] for k in ("stringValue", "string_value", "intValue") if k in predicate), None
            )
            items = [item for item in items if item.get(key) == wanted]
    sort_by = query.get("sort_by", [""])[0]
    if sort_by:
        field, _, order = sort_by.partition(" ")
        items = sorted(items, key=lambda item: str(item.get(field, "")), reverse=order.strip() == "desc")
    size = int(query.get("page_size", ["0"])[0] or 0)
    return items[:size] if size > 0 else items


def _in_namespace(items: list[dict], query: dict) -> list[dict]:
    namespace = query.get("namespace", [""])[0]
    return [item for item in items if item.get("namespace", "") == namespace] if namespace else items


def _parse_multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise HttpError(400, "expected multipart/form-data with an uploadfile part")
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }


def _pipeline_spec(upload: bytes) -> dict:
    try:
        docs = [doc for doc in yaml.safe_load_all(upload.decode("utf-8")) if doc is not None]
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise HttpError(400, f"the uploaded file is not YAML: {type(exc).__name__}") from None
    if not docs or not isinstance(docs[0], dict) or "pipelineInfo" not in docs[0] or "root" not in docs[0]:
        raise HttpError(400, "the uploaded file is not a KFP v2 pipeline spec")
    return docs[0]


def _fault_for(method: str, path: str) -> dict | None:
    for fault in STATE["faults"]:
        if fault.get("count", 1) <= 0 or fault.get("method", method) != method:
            continue
        if re.search(fault.get("path", ""), path):
            fault["count"] = fault.get("count", 1) - 1
            return fault
    return None


# -- the API -------------------------------------------------------------------------------------------------


def _upload_pipeline(query: dict, files: dict[str, bytes]) -> dict:
    if "uploadfile" not in files:
        raise HttpError(400, "no uploadfile in the form")
    spec = _pipeline_spec(files["uploadfile"])
    name = query.get("display_name", query.get("name", [""]))[0] or spec["pipelineInfo"].get("name", "")
    namespace = query.get("namespace", [""])[0]
    if any(p["display_name"] == name and p["namespace"] == namespace for p in STATE["pipelines"].values()):
        raise HttpError(409, f"Failed to create a new pipeline. The name {name} already exists")
    pipeline = {
        "pipeline_id": _new_id(),
        "display_name": name,
        "name": name,
        "description": query.get("description", [""])[0],
        "created_at": _now(),
        "namespace": namespace,
    }
    STATE["pipelines"][pipeline["pipeline_id"]] = pipeline
    _add_version(pipeline["pipeline_id"], name, spec, query.get("description", [""])[0])
    return pipeline


def _add_version(pipeline_id: str, name: str, spec: dict, description: str = "") -> dict:
    if any(v["pipeline_id"] == pipeline_id and v["display_name"] == name for v in STATE["versions"].values()):
        raise HttpError(409, f"Failed to create a pipeline version. The name {name} already exists")
    version = {
        "pipeline_id": pipeline_id,
        "pipeline_version_id": _new_id(),
        "display_name": name,
        "name": name,
        "description": description,
        "created_at": _now(),
        "pipeline_spec": spec,
    }
    STATE["versions"][version["pipeline_version_id"]] = version
    return version


def _upload_version(query: dict, files: dict[str, bytes]) -> dict:
    pipeline_id = query.get("pipelineid", [""])[0]
    if pipeline_id not in STATE["pipelines"]:
        raise HttpError(404, f"Pipeline {pipeline_id} not found")
    if "uploadfile" not in files:
        raise HttpError(400, "no uploadfile in the form")
    spec = _pipeline_spec(files["uploadfile"])
    name = query.get("display_name", query.get("name", [""]))[0] or spec["pipelineInfo"].get("name", "")
    return _add_version(pipeline_id, name, spec, query.get("description", [""])[0])


def _get(kind: str, key: str, label: str) -> dict:
    if key not in STATE[kind]:
        raise HttpError(404, f"{label} {key} not found")
    return STATE[kind][key]


def _check_reference(body: dict) -> None:
    """A run or recurring run needs an existing experiment and pipeline version (or an inline spec)."""
    if body.get("experiment_id"):
        _get("experiments", body["experiment_id"], "Experiment")
    reference = body.get("pipeline_version_reference")
    if reference:
        pipeline = _get("pipelines", reference.get("pipeline_id", ""), "Pipeline")
        version = _get("versions", reference.get("pipeline_version_id", ""), "Pipeline version")
        if version["pipeline_id"] != pipeline["pipeline_id"]:
            raise HttpError(404, "Pipeline version not found in that pipeline")
    elif not body.get("pipeline_spec"):
        raise HttpError(400, "a pipeline_version_reference or a pipeline_spec is required")


def _create_experiment(body: dict) -> dict:
    name = body.get("display_name") or ""
    namespace = body.get("namespace") or ""
    if not name:
        raise HttpError(400, "Experiment display_name is required")
    if any(e["display_name"] == name and e["namespace"] == namespace for e in STATE["experiments"].values()):
        raise HttpError(409, f"Failed to create a new experiment. The name {name} already exists")
    experiment = {
        "experiment_id": _new_id(),
        "display_name": name,
        "description": body.get("description") or "",
        "created_at": _now(),
        "namespace": namespace,
        "storage_state": "AVAILABLE",
    }
    STATE["experiments"][experiment["experiment_id"]] = experiment
    return experiment


def _create_run(body: dict) -> dict:
    _check_reference(body)
    run = {
        **body,
        "run_id": _new_id(),
        "storage_state": "AVAILABLE",
        "created_at": _now(),
        "scheduled_at": "1970-01-01T00:00:00Z",
        "finished_at": "1970-01-01T00:00:00Z",
        "state": "PENDING",
    }
    experiment = STATE["experiments"].get(body.get("experiment_id") or "")
    run["namespace"] = experiment["namespace"] if experiment else ""
    STATE["runs"][run["run_id"]] = run
    return run


def _create_recurring_run(body: dict) -> dict:
    _check_reference(body)
    cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron")
    if cron is not None and len(cron.split()) != 6:
        raise HttpError(400, f"Invalid cron expression {cron!r}: expected 6 fields")
    recurring = {
        **body,
        "recurring_run_id": _new_id(),
        "created_at": _now(),
        "status": "ENABLED" if body.get("mode", "ENABLE") == "ENABLE" else "DISABLED",
    }
    experiment = STATE["experiments"].get(body.get("experiment_id") or "")
    recurring["namespace"] = experiment["namespace"] if experiment else ""
    STATE["recurring_runs"][recurring["recurring_run_id"]] = recurring
    return recurring


def _listing(key: str, items: list[dict]) -> dict:
    return {key: items, "total_size": len(items)} if items else {"total_size": 0}


def _route(method: str, path: str, query: dict, headers, body: bytes) -> dict:
    """The API proper: returns the JSON answer or raises :class:`HttpError`."""
    rest = path[len(PREFIX) :]
    if method == "GET" and rest == "/healthz":
        return {"multi_user": STATE["multi_user"], "pipeline_store": "database"}
    if method == "POST" and rest in ("/pipelines/upload", "/pipelines/upload_version"):
        files = _parse_multipart(headers.get("Content-Type", ""), body)
        return (_upload_pipeline if rest.endswith("upload") else _upload_version)(query, files)
    if method == "GET" and rest == "/pipelines":
        return _listing(
            "pipelines", _filtered(_in_namespace(list(STATE["pipelines"].values()), query), query)
        )
    if match := re.fullmatch(r"/pipelines/([^/]+)", rest):
        if method == "GET":
            return _get("pipelines", match[1], "Pipeline")
    if match := re.fullmatch(r"/pipelines/([^/]+)/versions", rest):
        if method == "GET":
            _get("pipelines", match[1], "Pipeline")
            versions = [v for v in STATE["versions"].values() if v["pipeline_id"] == match[1]]
            return _listing("pipeline_versions", _filtered(versions, query))
    if match := re.fullmatch(r"/pipelines/([^/]+)/versions/([^/]+)", rest):
        if method == "GET":
            _get("pipelines", match[1], "Pipeline")
            return _get("versions", match[2], "Pipeline version")
    if rest == "/experiments":
        if method == "POST":
            return _create_experiment(json.loads(body or b"{}"))
        if method == "GET":
            items = _in_namespace(list(STATE["experiments"].values()), query)
            return _listing("experiments", _filtered(items, query))
    if (match := re.fullmatch(r"/experiments/([^/:]+)", rest)) and method == "GET":
        return _get("experiments", match[1], "Experiment")
    if rest == "/runs":
        if method == "POST":
            return _create_run(json.loads(body or b"{}"))
        if method == "GET":
            runs = list(STATE["runs"].values())
            if query.get("experiment_id"):
                runs = [r for r in runs if r.get("experiment_id") == query["experiment_id"][0]]
            return _listing("runs", _filtered(_in_namespace(runs, query), query))
    if (match := re.fullmatch(r"/runs/([^/:]+)", rest)) and method == "GET":
        return _get("runs", match[1], "Run")
    if rest == "/recurringruns":
        if method == "POST":
            return _create_recurring_run(json.loads(body or b"{}"))
        if method == "GET":
            items = list(STATE["recurring_runs"].values())
            if query.get("experiment_id"):
                items = [r for r in items if r.get("experiment_id") == query["experiment_id"][0]]
            return _listing("recurringRuns", _filtered(_in_namespace(items, query), query))
    if (match := re.fullmatch(r"/recurringruns/([^/:]+)", rest)) and method == "GET":
        return _get("recurring_runs", match[1], "Recurring run")
    raise HttpError(404, f"unknown endpoint {method} {path}")


def _control(body: dict) -> None:
    if body.get("reset"):
        _reset()
    if "require_token" in body:
        STATE["require_token"] = body["require_token"]
    if "multi_user" in body:
        STATE["multi_user"] = bool(body["multi_user"])
    if "faults" in body:
        STATE["faults"] = [dict(fault) for fault in body["faults"]]
    if "set_run" in body:
        change = dict(body["set_run"])
        run = _get("runs", change.pop("run_id", ""), "Run")
        run.update(change)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _handle(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        if url.path == "/_requests" and method == "GET":
            with LOCK:
                self._send(200, list(STATE["requests"]))
            return
        if url.path == "/_control" and method == "POST":
            with LOCK:
                try:
                    _control(json.loads(body or b"{}"))
                except HttpError as exc:
                    self._send(exc.status, {"error": exc.message})
                    return
            self._send(200, {})
            return
        query = parse_qs(url.query, keep_blank_values=True)
        with LOCK:
            STATE["requests"].append(
                {
                    "method": method,
                    "path": url.path,
                    "query": query,
                    "headers": dict(self.headers.items()),
                    "body": body.decode("utf-8", errors="replace"),
                }
            )
            try:
                if not url.path.startswith(PREFIX + "/"):
                    raise HttpError(404, f"unknown path {url.path}")
                token = STATE["require_token"]
                if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                    raise HttpError(401, "Unauthenticated: a valid bearer token is required")
                fault = _fault_for(method, url.path)
                if fault is not None:
                    raise HttpError(int(fault.get("status", 500)), fault.get("message", "scripted fault"))
                status, payload = 200, _route(method, url.path, query, self.headers, body)
            except HttpError as exc:
                code = GRPC_CODES.get(exc.status, 2)
                status, payload = exc.status, {"error": exc.message, "code": code, "message": exc.message}
        self._send(status, payload)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")


class Server(ThreadingHTTPServer):
    daemon_threads = True


class KfpServer:
    """The scripted KFP API server in a process group of its own on a free loopback port."""

    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    def start(cls, token: str | None = None, multi_user: bool = False) -> KfpServer:
        args = [sys.executable, "-m", "tests.servers.kfp_scripted", "--port", "0"]
        args += ["--token", token] if token is not None else []
        args += ["--multi-user"] if multi_user else []
        proc = subprocess.Popen(
            args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True
        )
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            server = cls(proc, 0)
            server.stop()
            raise RuntimeError(f"the scripted KFP server did not start: {proc.stderr.read()[-2000:]}")
        return cls(proc, int(line.split()[1]))

    def control(self, **settings) -> None:
        """POST ``settings`` to /_control (require_token, multi_user, reset, faults, set_run)."""
        request = urllib.request.Request(
            f"{self.url}/_control", data=json.dumps(settings).encode(), method="POST"
        )
        urllib.request.urlopen(request, timeout=10).read()

    def requests(self) -> list[dict]:
        """Every ``/apis/`` request the server got, oldest first."""
        return json.loads(urllib.request.urlopen(f"{self.url}/_requests", timeout=10).read())

    def stop(self) -> None:
        """Kill the server's process group (it is the group's leader) and reap it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", help="require this bearer token on every /apis/ request")
    parser.add_argument("--multi-user", action="store_true", help="healthz says multi_user: true")
    args = parser.parse_args()
    STATE["require_token"] = args.token
    STATE["multi_user"] = args.multi_user
    server = Server(("127.0.0.1", args.port), Handler)
    sys.stdout.write(f"PORT {server.server_address[1]}\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
