"""Submit, schedule and list compiled w4s pipelines on a Kubeflow Pipelines cluster (``kfp.Client``).

Everything here works on a compiled pipeline package: the KFP v2 IR YAML that ``w4s pipeline compile``
(or ``kfp.compiler.Compiler().compile``) writes. Needs the ``kfp`` extra; the core package imports
without it.

Usage::

    from w4s.pipelines import client

    params = client.parse_params(["task=humaneval", "budget_usd=2.5"])       # from --param k=v
    done = client.submit(Path("workflow-optimization.yaml"), host="http://localhost:8080",
                         experiment="w4s", params=params)
    done["run_id"], done["url"]                                               # the run in the KFP UI
    client.schedule(Path("workflow-optimization.yaml"), host=..., cron="0 0 3 * * 1")   # Mondays 03:00
    client.list_runs("http://localhost:8080", None, experiment="w4s", limit=20)

``submit`` uploads the package as a pipeline named by its ``pipelineInfo.name`` (or, when a pipeline of
that name exists, as a new version of it named ``<name>-<sha256 of the file, 12 hex>``; the same file
submitted again reuses that version), creates the experiment if it is missing and starts a run of that
version in it. ``schedule`` does the same but creates a recurring run: KFP's cron has 6 fields, seconds
first (``"0 0 3 * * 1"`` is 03:00:00 every Monday), ``max_concurrency`` is 1..10 and catch-up is off
unless asked for (a paused schedule does not backfill every missed slot when it resumes).

Parameters are checked against the package's ``root.inputDefinitions.parameters`` before anything is
sent: unknown names, missing required ones and values of the wrong type are a ``ConfigError``. Strings
(what ``--param k=v`` gives) are converted to the declared type (integers, numbers, ``true``/``false``,
JSON for lists and structs). Secrets never travel as parameters: a parameter named like a key, secret,
token, password or credential, or whose value is that of such an environment variable
(``OPENAI_API_KEY`` ...), is refused; give the pipeline the *name* of a Kubernetes secret instead
(``api_key_secret_name=...``: names ending in ``_name``, ``_ref``, ``_env``, ``_file`` or ``_path`` are
allowed, and so are ``max_tokens`` and the like). Dict and list parameters are searched the same way.

Auth, as KFP does it: an explicit ``token`` (``--token``) wins; otherwise the file named by
``KF_PIPELINES_SA_TOKEN_PATH`` (a service-account token, as mounted in a pod); otherwise no token (a
port-forward to an unauthenticated ``ml-pipeline-ui``). The token goes as ``Authorization: Bearer``.
``namespace`` is the Kubeflow profile namespace of a multi-user install (``None`` for single-user).
The run URL uses ``ui_host`` or ``KF_PIPELINES_UI_ENDPOINT`` when set, else ``host``.

Every command first makes one health check with a deadline (``HEALTH_TIMEOUT_S``, no retries), so a
wrong host fails fast. Errors are one line, never a traceback: ``InfrastructureError`` when the cluster
side fails (host unreachable or silent: check ``--host`` and the port-forward; 401/403: which token
source was used and how to pass one; any other HTTP error: status and KFP's short reason) and
``ConfigError`` for bad input (a package that is missing or not a KFP pipeline spec, bad parameters, a
bad cron or max_concurrency, an unreadable token file, an unknown experiment in ``list_runs``). kfp's
own console output (links it prints) goes to this module's logger at INFO.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from w4s.errors import ConfigError, InfrastructureError
from w4s.extras import require

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "w4s"
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"
MAX_CONCURRENCY = 10  # KFP's own bound for recurring runs
HEALTH_TIMEOUT_S = 15.0  # connect and read deadline of the first request to the host

_CRON_FIELDS = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    (
        "month",
        1,
        12,
        {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())},
    ),
    ("day-of-week", 0, 6, {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}),
)
_CRON_HELP = (
    "KFP's cron has 6 fields: second minute hour day-of-month month day-of-week, "
    "each *, ?, N, N-M, */S or N-M/S or a comma list (e.g. '0 0 3 * * 1' = 03:00:00 every Monday)"
)
_SECRET_NAME = re.compile(
    r"(^|_)(api_?keys?|access_?keys?|secrets?(_?keys?)?|private_?keys?|auth_?keys?|token|passwords?|passwd|pwd|credentials?|bearer)"
    r"(_|$)"
)
_SECRET_REFERENCE = re.compile(r"_(name|ref|reference|env|env_var|var|file|path)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- input checks (no network, no kfp) ------------------------------------------------------------------------


def validate_cron(expr: str) -> str:
    """Check a 6-field KFP cron expression before it is sent; returns it normalized (single spaces).

    KFP schedules with robfig/cron, seconds first: a 5-field Unix cron would silently mean something
    else, so it is refused with the 6-field form it probably meant.
    """
    fields = str(expr).split()
    if len(fields) == 5:
        raise ConfigError(f"cron {expr!r} has 5 fields; {_CRON_HELP}; did you mean '0 {' '.join(fields)}'?")
    if len(fields) != 6:
        raise ConfigError(f"cron {expr!r} has {len(fields)} fields; {_CRON_HELP}")
    for text, (label, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        problem = _cron_field_problem(text, label, low, high, names)
        if problem:
            raise ConfigError(f"cron {expr!r}: {problem}; {_CRON_HELP}")
    return " ".join(fields)


def _cron_field_problem(text: str, label: str, low: int, high: int, names: dict[str, int]) -> str | None:
    """What is wrong with one cron field, or None."""
    if text == "?":
        return (
            None if label in ("day-of-month", "day-of-week") else "'?' is only allowed in day-of-month/week"
        )

    def value(token: str) -> int | None:
        if token.upper() in names:
            return names[token.upper()]
        return int(token) if token.isdigit() else None

    for part in text.split(","):
        base, slash, step = part.partition("/")
        if slash and not (step.isdigit() and int(step) >= 1):
            return f"{label} step {step!r} is not a positive integer"
        if base == "*":
            continue
        start_text, dash, end_text = base.partition("-")
        start = value(start_text)
        end = value(end_text) if dash else start
        if start is None or end is None:
            return f"{label} {part!r} is not a number"
        if not (low <= start <= high and low <= end <= high):
            return f"{label} {part!r} is outside {low}-{high}"
        if start > end:
            return f"{label} range {base!r} runs backwards"
    return None


def parse_params(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["k=v", ...]`` (repeated ``--param``) as a dict; values stay strings until checked against the spec."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ConfigError(f"--param {pair!r} is not NAME=VALUE")
        if key in params:
            raise ConfigError(f"--param {key} is given twice")
        params[key] = value
    return params


def check_no_secrets(params: dict[str, Any]) -> None:
    """Refuse parameters that would carry a secret: it would be stored in the run's spec, visible in the UI.

    A name like a key, secret, token, password or credential is refused (at the top level whatever its
    value; inside a dict parameter when it holds a string), unless it ends in ``_name``, ``_ref``, ``_env``,
    ``_file`` or ``_path`` (it names where the secret is, like ``api_key_env``); so is any string equal to
    the value of such an environment variable.
    """
    secret_values = {
        value: name for name, value in os.environ.items() if len(value) >= 8 and _looks_secret(name)
    }
    advice = "put it in a Kubernetes secret and pass the secret's name"
    for path, value, top in _leaves(params):
        name = re.sub(r"(\[\d+\])+$", "", path).rpartition(".")[2]
        if _looks_secret(name) and (top or (isinstance(value, str) and value)):
            raise ConfigError(
                f"--param {path}: API keys and other secrets are never passed as pipeline parameters "
                f"(they would be stored in the run); {advice}"
            )
        if isinstance(value, str) and value in secret_values:
            raise ConfigError(
                f"--param {path} holds the value of ${secret_values[value]}: secrets are never passed as "
                f"pipeline parameters; {advice}"
            )


def _looks_secret(name: str) -> bool:
    snake = _snake(name)
    return bool(_SECRET_NAME.search(snake)) and not _SECRET_REFERENCE.search(snake)


def _leaves(value: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, Any, bool]]:
    """(dotted path, value, is a top-level parameter) for every parameter and everything nested in one."""
    if isinstance(value, dict):
        items = [(f"{path}.{key}" if path else str(key), item) for key, item in value.items()]
    elif isinstance(value, list | tuple):
        items = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    else:
        return
    for child, item in items:
        yield child, item, depth == 0
        if depth < 20:
            yield from _leaves(item, child, depth + 1)


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()).strip("_")


# -- the package ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    """A compiled pipeline package read from disk: its path, bytes, pipeline spec and parameters."""

    path: Path
    data: bytes
    spec: dict
    name: str

    @property
    def parameters(self) -> dict[str, dict]:
        """``root.inputDefinitions.parameters``: name -> {parameterType, defaultValue?, isOptional?}."""
        return ((self.spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def load_package(package: Path | str) -> Package:
    """Read and check a compiled KFP v2 pipeline YAML; ConfigError when it is missing or not one."""
    require("kfp", "kfp", "yaml")
    import yaml
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    path = Path(package)
    if not path.is_file():
        raise ConfigError(f"pipeline package {path} does not exist; compile one with: w4s pipeline compile")
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"pipeline package {path} is not a .yaml/.yml file (a compiled KFP pipeline spec)")
    data = path.read_bytes()
    try:
        docs = [doc for doc in yaml.safe_load_all(data.decode("utf-8")) if doc is not None]
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise ConfigError(f"pipeline package {path} is not valid YAML ({reason})") from None
    spec = docs[0] if docs else None
    if not isinstance(spec, dict) or not isinstance(spec.get("pipelineInfo"), dict) or "root" not in spec:
        raise ConfigError(f"pipeline package {path} is not a KFP pipeline spec (no pipelineInfo/root)")
    try:
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    except json_format.ParseError as exc:
        reason = " ".join(str(exc).split())[:160]
        raise ConfigError(f"pipeline package {path} is not a valid KFP pipeline spec ({reason})") from None
    name = str(spec["pipelineInfo"].get("name") or "").strip()
    if not name:
        raise ConfigError(f"pipeline package {path} has no pipelineInfo.name")
    return Package(path=path, data=data, spec=spec, name=name)


def check_params(package: Package, params: dict[str, Any] | None) -> dict[str, Any]:
    """Check ``params`` against the spec's inputs and convert strings to the declared types."""
    params = dict(params or {})
    check_no_secrets(params)
    declared = package.parameters
    unknown = sorted(set(params) - set(declared))
    if unknown:
        takes = ", ".join(sorted(declared)) or "no parameters"
        raise ConfigError(f"pipeline {package.name!r} has no parameter {unknown[0]!r}; it takes: {takes}")
    missing = sorted(
        name
        for name, definition in declared.items()
        if name not in params and "defaultValue" not in definition and not definition.get("isOptional")
    )
    if missing:
        raise ConfigError(
            f"pipeline {package.name!r} needs parameter(s) {', '.join(missing)}: give --param {missing[0]}=VALUE"
        )
    return {
        name: _typed(name, value, declared[name].get("parameterType", "STRING"))
        for name, value in params.items()
    }


def _typed(name: str, value: Any, kind: str) -> Any:
    """``value`` as the JSON value KFP expects for a parameter of type ``kind``; ConfigError if it is not one."""

    def wrong(what: str) -> ConfigError:
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        return ConfigError(f"--param {name}={str(shown)[:60]!r}: expected {what} ({kind})")

    if kind == "STRING":
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise wrong("true or false")
    if kind == "NUMBER_INTEGER":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise wrong("an integer")
    if kind == "NUMBER_DOUBLE":
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None or not math.isfinite(number):
            raise wrong("a finite number")
        return number
    if kind in ("LIST", "STRUCT"):
        wanted, what = (list, "a JSON list") if kind == "LIST" else (dict, "a JSON object")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise wrong(what) from None
        if not isinstance(value, wanted):
            raise wrong(what)
        return value
    return value  # a type w4s does not know: KFP checks it


# -- talking to KFP -------------------------------------------------------------------------------------------


@dataclass
class _Session:
    """A ``kfp.Client`` with what the error messages need to say."""

    client: Any
    host: str
    ui: str
    namespace: str | None
    token_source: str


def _token(token: str | None) -> tuple[str | None, str]:
    """The bearer token to use and a phrase naming where it came from (for 401/403 messages)."""
    if token:
        return token.strip(), "the token given with --token"
    path = os.environ.get(TOKEN_PATH_ENV)
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{TOKEN_PATH_ENV}={path} cannot be read ({exc.strerror or exc})") from None
        if not text:
            raise ConfigError(f"{TOKEN_PATH_ENV}={path} is empty")
        return text, f"the token in ${TOKEN_PATH_ENV} ({path})"
    return None, "no token"


def _check_host(host: str) -> str:
    host = (host or "").strip().rstrip("/")
    if not re.match(r"https?://[^/\s]+", host):
        raise ConfigError(f"--host {host!r} is not a URL; give the KFP API like http://localhost:8080")
    return host


def _short(text: object, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def _reason(exc: Any) -> str:
    """KFP's own short message from an ApiException body ({"error", "message"}), else the HTTP reason."""
    body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else exc.body
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        payload = json.loads(body)
        message = payload.get("message") or payload.get("error")
        if message:
            return _short(message)
    return _short(body or exc.reason or "no reason given")


@contextlib.contextmanager
def _errors(host: str, token_source: str, namespace: str | None) -> Iterator[None]:
    """Turn what kfp, kfp_server_api, urllib3 and requests raise into one-line w4s errors."""
    import requests
    import urllib3
    from kfp_server_api import ApiException

    unreachable = "check --host, and that a port-forward is running (kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80)"
    try:
        yield
    except ApiException as exc:
        status = exc.status or 0
        if status == 0:
            raise InfrastructureError(
                f"cannot reach the KFP API at {host} ({_short(exc.reason)}); {unreachable}"
            ) from None
        if status in (401, 403):
            word = "not authenticated" if status == 401 else "not allowed"
            where = f" in namespace {namespace!r}" if namespace and status == 403 else ""
            raise InfrastructureError(
                f"KFP at {host} answered {status} ({word}{where}) with {token_source}: {_reason(exc)}; "
                f"pass a valid token with --token or a token file in ${TOKEN_PATH_ENV}"
            ) from None
        raise InfrastructureError(
            f"KFP at {host} answered {status} {exc.reason or ''}: {_reason(exc)}"
        ) from None
    except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, ConnectionError) as exc:
        raise InfrastructureError(
            f"cannot reach the KFP API at {host} ({_why(exc)}); {unreachable}"
        ) from None


def _why(exc: BaseException) -> str:
    """A few words on a connection failure: 'Connection refused', 'no answer within 15 s', ..."""
    cause = getattr(exc, "reason", None) or exc
    if "timeout" in type(cause).__name__.lower():
        return f"no answer within {HEALTH_TIMEOUT_S:g} s"
    text = str(cause)
    for marker in ("Failed to establish a new connection: ", "Failed to resolve "):
        if marker in text:
            return _short(text.split(marker, 1)[1].replace("[Errno 111] ", ""), 120)
    return type(cause).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """kfp prints links to stdout; a library must not, so they go to the logger."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        for line in captured.getvalue().splitlines():
            if line.strip():
                logger.info("kfp: %s", line.strip())


def _health(host: str, bearer: str | None) -> Any:
    """One health check with a deadline and no retries, so a wrong or dead host fails fast and clearly.

    kfp.Client's own start-up check retries 5 times 5 s apart and its calls have no timeout: a host that
    drops packets would otherwise hang the command for minutes.
    """
    import kfp_server_api

    config = kfp_server_api.Configuration(host=host)
    config.retries = False
    if bearer:
        config.api_key["authorization"] = bearer
        config.api_key_prefix["authorization"] = "Bearer"
    api_client = kfp_server_api.ApiClient(config)
    try:
        api = kfp_server_api.HealthzServiceApi(api_client)
        return api.healthz_service_get_healthz(_request_timeout=(HEALTH_TIMEOUT_S, HEALTH_TIMEOUT_S))
    finally:
        api_client.rest_client.pool_manager.clear()


def _connect(host: str, namespace: str | None, token: str | None, ui_host: str | None = None) -> _Session:
    require("kfp", "kfp", "kfp_server_api")
    import kfp

    host = _check_host(host)
    bearer, source = _token(token)
    with _errors(host, source, namespace):
        health = _health(host, bearer)

    class Client(kfp.Client):
        """kfp.Client that reuses the health check just made instead of making its own (with retries)."""

        def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
            return health

    with _errors(host, source, namespace), _quiet(), warnings.catch_warnings():
        # kfp warns "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later" on every start
        warnings.simplefilter("ignore", FutureWarning)
        kwargs: dict[str, Any] = {"host": host, "existing_token": bearer}
        if namespace:
            kwargs["namespace"] = namespace
        client = Client(**kwargs)
    ui = (ui_host or os.environ.get(UI_ENDPOINT_ENV) or host).rstrip("/")
    if not ui.startswith(("http://", "https://")):
        ui = "http://" + ui
    return _Session(client=client, host=host, ui=ui, namespace=namespace, token_source=source)


def _equals(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "stringValue": value}]})


def _experiment(session: _Session, name: str, *, create: bool) -> Any:
    """The experiment named ``name`` (created if missing and ``create``); ConfigError if missing otherwise."""
    client = session.client
    namespace = session.namespace or ""
    found = (
        client.list_experiments(filter=_equals("display_name", name), namespace=namespace).experiments or []
    )
    if found:
        return found[0]
    if not create:
        where = f" in namespace {session.namespace!r}" if session.namespace else ""
        raise ConfigError(f"no experiment named {name!r} on {session.host}{where}")
    logger.info("creating experiment %s on %s", name, session.host)
    return client.create_experiment(name=name, namespace=session.namespace)


def _upload(session: _Session, package: Package, pipeline_name: str) -> tuple[str, str]:
    """Upload the package as a pipeline, or as a version of the pipeline of that name; (pipeline_id, version_id)."""
    client = session.client
    listed = client.list_pipelines(filter=_equals("display_name", pipeline_name), namespace=session.namespace)
    pipelines = listed.pipelines or []
    if not pipelines:
        logger.info("uploading pipeline %s to %s", pipeline_name, session.host)
        pipeline = client.upload_pipeline(
            str(package.path), pipeline_name=pipeline_name, namespace=session.namespace
        )
        versions = client.list_pipeline_versions(pipeline.pipeline_id, page_size=1, sort_by="created_at desc")
        if not versions.pipeline_versions:
            raise InfrastructureError(
                f"KFP at {session.host} created pipeline {pipeline_name!r} but lists no version"
            )
        return pipeline.pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    pipeline_id = pipelines[0].pipeline_id
    version_name = f"{pipeline_name}-{package.digest[:12]}"
    same = client.list_pipeline_versions(
        pipeline_id, filter=_equals("display_name", version_name)
    ).pipeline_versions
    if same:
        logger.info("pipeline %s version %s is already on %s", pipeline_name, version_name, session.host)
        return pipeline_id, same[0].pipeline_version_id
    logger.info("uploading pipeline %s version %s to %s", pipeline_name, version_name, session.host)
    version = client.upload_pipeline_version(str(package.path), version_name, pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def _prepare(package: Path | str, params: dict[str, Any] | None) -> tuple[Package, dict[str, Any]]:
    check_no_secrets(dict(params or {}))  # before the file is even read
    loaded = load_package(package)
    return loaded, check_params(loaded, params)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def submit(
    package: Path | str,
    *,
    host: str,
    namespace: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    params: dict[str, Any] | None = None,
    run_name: str | None = None,
    token: str | None = None,
    ui_host: str | None = None,
    pipeline_name: str | None = None,
) -> dict[str, Any]:
    """Upload ``package`` (or a new version of it) and start a run in ``experiment`` (created if missing).

    Returns run_id, run_name, url (the run in the KFP UI), experiment, experiment_id, pipeline,
    pipeline_id, pipeline_version_id and the params sent.
    """
    loaded, typed = _prepare(package, params)
    name = pipeline_name or loaded.name
    run_name = run_name or f"{name}-{_stamp()}"
    session = _connect(host, namespace, token, ui_host)
    with _errors(session.host, session.token_source, namespace), _quiet():
        found = _experiment(session, experiment, create=True)
        pipeline_id, version_id = _upload(session, loaded, name)
        run = session.client.run_pipeline(
            experiment_id=found.experiment_id,
            job_name=run_name,
            params=typed,
            pipeline_id=pipeline_id,
            version_id=version_id,
        )
    url = f"{session.ui}/#/runs/details/{run.run_id}"
    logger.info("started run %s of %s: %s", run.run_id, name, url)
    return {
        "run_id": run.run_id,
        "run_name": run_name,
        "url": url,
        "experiment": experiment,
        "experiment_id": found.experiment_id,
        "pipeline": name,
        "pipeline_id": pipeline_id,
        "pipeline_version_id": version_id,
        "params": typed,
    }


def schedule(
    package: Path | str,
    *,
    host: str,
    cron: str,
    max_concurrency: int = 1,
    catchup: bool = False,
    namespace: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    params: dict[str, Any] | None = None,
    job_name: str | None = None,
    token: str | None = None,
    ui_host: str | None = None,
    pipeline_name: str | None = None,
) -> dict[str, Any]:
    """Upload ``package`` (or a new version) and create an enabled recurring run on the 6-field ``cron``.

    Returns recurring_run_id, job_name, url, cron, max_concurrency, catchup, experiment(_id), pipeline(_id)
    and pipeline_version_id.
    """
    cron = validate_cron(cron)
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
        raise ConfigError(f"--max-concurrency {max_concurrency!r} is not an integer (1-{MAX_CONCURRENCY})")
    if not 1 <= max_concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"--max-concurrency {max_concurrency} is outside 1-{MAX_CONCURRENCY} (KFP's bound)")
    loaded, typed = _prepare(package, params)
    name = pipeline_name or loaded.name
    job_name = job_name or f"{name}-schedule"
    session = _connect(host, namespace, token, ui_host)
    with _errors(session.host, session.token_source, namespace), _quiet():
        found = _experiment(session, experiment, create=True)
        pipeline_id, version_id = _upload(session, loaded, name)
        recurring = session.client.create_recurring_run(
            experiment_id=found.experiment_id,
            job_name=job_name,
            cron_expression=cron,
            max_concurrency=max_concurrency,
            no_catchup=not catchup,
            params=typed,
            pipeline_id=pipeline_id,
            version_id=version_id,
            enabled=True,
        )
    url = f"{session.ui}/#/recurringrun/details/{recurring.recurring_run_id}"
    logger.info("scheduled %s as %s (%s): %s", name, job_name, cron, url)
    return {
        "recurring_run_id": recurring.recurring_run_id,
        "job_name": job_name,
        "url": url,
        "cron": cron,
        "max_concurrency": max_concurrency,
        "catchup": catchup,
        "experiment": experiment,
        "experiment_id": found.experiment_id,
        "pipeline": name,
        "pipeline_id": pipeline_id,
        "pipeline_version_id": version_id,
        "params": typed,
    }


def _when(value: Any) -> str | None:
    """An ISO time, or None for KFP's "not yet" (the epoch)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return None if moment <= _EPOCH else moment.isoformat()
    return str(value) or None


def list_runs(
    host: str,
    namespace: str | None = None,
    experiment: str | None = None,
    limit: int = 20,
    *,
    token: str | None = None,
) -> list[dict[str, Any]]:
    """The newest ``limit`` runs (of ``experiment`` if given): id, name, state, created, finished, experiment_id."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"--limit {limit!r} must be a positive integer")
    session = _connect(host, namespace, token)
    with _errors(session.host, session.token_source, namespace), _quiet():
        experiment_id = _experiment(session, experiment, create=False).experiment_id if experiment else None
        listed = session.client.list_runs(
            page_size=limit, sort_by="created_at desc", experiment_id=experiment_id, namespace=namespace
        )
    return [
        {
            "id": run.run_id,
            "name": run.display_name,
            "state": run.state or "UNKNOWN",
            "created": _when(run.created_at),
            "finished": _when(run.finished_at),
            "experiment_id": run.experiment_id,
        }
        for run in listed.runs or []
    ]
