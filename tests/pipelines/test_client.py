"""w4s.pipelines.client against the scripted KFP API server: what is sent, and one-line errors."""

from __future__ import annotations

import email.parser
import email.policy
import json
import socket
from pathlib import Path

import pytest
import yaml

from tests.servers.kfp_scripted import KfpServer
from w4s.errors import ConfigError, InfrastructureError
from w4s.pipelines import client

PARAMS = {"text": "hi", "repeat": "3", "scale": "0.25", "loud": "true"}
TYPED = {"text": "hi", "repeat": 3, "scale": 0.25, "loud": True}


@pytest.fixture(autouse=True)
def no_kfp_env(monkeypatch):
    """Each test chooses its own token source and UI address."""
    for name in (client.TOKEN_PATH_ENV, client.UI_ENDPOINT_ENV, "KF_PIPELINES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def sent(server: KfpServer, method: str, path: str) -> list[dict]:
    return [r for r in server.requests() if r["method"] == method and r["path"] == f"/apis/v2beta1{path}"]


def body(request: dict) -> dict:
    return json.loads(request["body"])


def uploaded_file(request: dict) -> bytes:
    """The ``uploadfile`` part of a recorded multipart upload."""
    raw = (
        b"Content-Type: " + header(request, "Content-Type").encode() + b"\r\n\r\n" + request["body"].encode()
    )
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
    return parts["uploadfile"].get_payload(decode=True)


def header(request: dict, name: str) -> str | None:
    """A recorded request's header, whatever case the client wrote its name in."""
    return next((v for k, v in request["headers"].items() if k.lower() == name.lower()), None)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.strip() == message and message
    return message


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- what is sent -----------------------------------------------------------------------------------------------


def test_the_uploaded_pipeline_is_the_compiled_spec(kfp_server, echo_package):
    done = client.submit(echo_package, host=kfp_server.url, experiment="nightly", params={"text": "hi"})
    (upload,) = sent(kfp_server, "POST", "/pipelines/upload")
    assert upload["query"]["name"] == ["w4s-test-echo"]
    assert yaml.safe_load(uploaded_file(upload)) == yaml.safe_load(echo_package.read_text())
    assert done["pipeline"] == "w4s-test-echo"


def test_a_run_is_created_in_the_named_experiment_with_the_params(kfp_server, echo_package):
    done = client.submit(
        echo_package, host=kfp_server.url, experiment="nightly", params=PARAMS, run_name="try-1"
    )
    (created,) = sent(kfp_server, "POST", "/experiments")
    assert body(created)["display_name"] == "nightly"
    (run,) = sent(kfp_server, "POST", "/runs")
    run = body(run)
    assert run["display_name"] == "try-1"
    assert run["runtime_config"]["parameters"] == TYPED
    assert run["experiment_id"] == done["experiment_id"]
    assert run["pipeline_version_reference"] == {
        "pipeline_id": done["pipeline_id"],
        "pipeline_version_id": done["pipeline_version_id"],
    }
    assert done["url"] == f"{kfp_server.url}/#/runs/details/{done['run_id']}"
    assert done["params"] == TYPED


def test_the_experiment_is_reused_and_a_changed_package_is_a_new_version(kfp_server, echo_package, tmp_path):
    first = client.submit(echo_package, host=kfp_server.url, experiment="nightly", params={"text": "a"})
    second = client.submit(echo_package, host=kfp_server.url, experiment="nightly", params={"text": "b"})
    third = client.submit(echo_package, host=kfp_server.url, experiment="nightly", params={"text": "c"})
    assert len(sent(kfp_server, "POST", "/experiments")) == 1
    assert len(sent(kfp_server, "POST", "/pipelines/upload")) == 1
    (version,) = sent(kfp_server, "POST", "/pipelines/upload_version")  # the third reuses the second's
    assert version["query"]["pipelineid"] == [first["pipeline_id"]]
    assert second["pipeline_version_id"] == third["pipeline_version_id"] != first["pipeline_version_id"]
    assert yaml.safe_load(uploaded_file(version)) == yaml.safe_load(echo_package.read_text())

    changed = tmp_path / "echo.yaml"
    changed.write_text(echo_package.read_text().replace("one step, for the client tests", "changed"))
    fourth = client.submit(changed, host=kfp_server.url, experiment="nightly", params={"text": "d"})
    assert len(sent(kfp_server, "POST", "/pipelines/upload_version")) == 2
    assert fourth["pipeline_version_id"] not in (first["pipeline_version_id"], second["pipeline_version_id"])


def test_the_recurring_run_carries_cron_concurrency_and_no_catchup(kfp_server, echo_package):
    done = client.schedule(
        echo_package,
        host=kfp_server.url,
        cron="0  0 3 * * 1",
        max_concurrency=2,
        experiment="weekly",
        params={"text": "hi"},
        job_name="mondays",
    )
    (recurring,) = sent(kfp_server, "POST", "/recurringruns")
    recurring = body(recurring)
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert int(recurring["max_concurrency"]) == 2
    assert recurring["no_catchup"] is True
    assert recurring["mode"] == "ENABLE"
    assert recurring["display_name"] == "mondays"
    assert recurring["runtime_config"]["parameters"] == {"text": "hi"}
    assert recurring["experiment_id"] == done["experiment_id"]
    assert recurring["pipeline_version_reference"]["pipeline_version_id"] == done["pipeline_version_id"]
    assert done["cron"] == "0 0 3 * * 1" and done["catchup"] is False
    assert done["url"] == f"{kfp_server.url}/#/recurringrun/details/{done['recurring_run_id']}"

    client.schedule(echo_package, host=kfp_server.url, cron="0 0 3 * * 1", catchup=True, params={"text": "x"})
    assert body(sent(kfp_server, "POST", "/recurringruns")[-1])["no_catchup"] is False


def test_namespace_goes_with_the_experiment_pipeline_and_listing(kfp_server, echo_package):
    kfp_server.control(multi_user=True)
    client.submit(echo_package, host=kfp_server.url, namespace="team-a", experiment="e", params={"text": "x"})
    assert body(sent(kfp_server, "POST", "/experiments")[0])["namespace"] == "team-a"
    assert sent(kfp_server, "POST", "/pipelines/upload")[0]["query"]["namespace"] == ["team-a"]
    assert len(client.list_runs(kfp_server.url, "team-a")) == 1
    assert sent(kfp_server, "GET", "/runs")[-1]["query"]["namespace"] == ["team-a"]
    assert client.list_runs(kfp_server.url, "team-b") == []


def test_no_secret_value_is_sent_and_nothing_is_printed(kfp_server, echo_package, monkeypatch, capsys):
    secret = "sk-test-DO-NOT-SEND-7f3a9c"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("W4S_EXECUTOR_TOKEN", secret + "-2")
    client.submit(echo_package, host=kfp_server.url, params=PARAMS)
    client.schedule(echo_package, host=kfp_server.url, cron="0 0 3 * * 1", params=PARAMS)
    client.list_runs(kfp_server.url)
    recorded = json.dumps(kfp_server.requests())
    assert len(kfp_server.requests()) > 5 and "hi" in recorded
    assert secret not in recorded
    assert capsys.readouterr().out == ""  # kfp's links went to the logger


@pytest.mark.parametrize(
    "params",
    [
        {"api_key": "x"},
        {"openaiApiKey": "x"},
        {"hf_token": "x"},
        {"db_password": "x"},
        {"executor_config": {"model": "m", "api_key": "x"}},
        {"text": "sk-test-DO-NOT-SEND-7f3a9c"},  # the value of $OPENAI_API_KEY under another name
    ],
)
def test_a_secret_param_is_refused_before_anything_is_sent(kfp_server, echo_package, monkeypatch, params):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-DO-NOT-SEND-7f3a9c")
    with pytest.raises(ConfigError) as exc:
        client.submit(echo_package, host=kfp_server.url, params=params)
    message = one_line(exc)
    assert "Kubernetes secret" in message and "sk-test" not in message
    assert kfp_server.requests() == []


def test_names_that_only_mention_tokens_or_name_a_secret_are_allowed():
    client.check_no_secrets(
        {"max_tokens": 5, "tokens_per_minute": 0, "api_key_secret_name": "w4s-keys", "cache_key": "c"}
    )
    client.check_no_secrets({"executor_config": {"api_key_env": "OPENAI_API_KEY", "api_key": None}})


# -- errors ------------------------------------------------------------------------------------------------------


def test_an_unreachable_host_is_one_line_naming_it(echo_package):
    url = closed_port_url()
    with pytest.raises(InfrastructureError) as exc:
        client.submit(echo_package, host=url, params={"text": "x"})
    message = one_line(exc)
    assert url in message and "--host" in message and "port-forward" in message
    with pytest.raises(InfrastructureError) as exc:
        client.list_runs(url)
    assert url in one_line(exc)


def test_a_host_that_never_answers_fails_at_the_deadline(monkeypatch):
    """Connects (the kernel's backlog accepts) but nothing ever answers: the one health check times out."""
    monkeypatch.setattr(client, "HEALTH_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(InfrastructureError) as exc:
            client.list_runs(url)
    message = one_line(exc)
    assert url in message and "no answer within 0.5 s" in message and "port-forward" in message


def test_one_health_check_per_command(kfp_server, echo_package):
    client.submit(echo_package, host=kfp_server.url, params={"text": "x"})
    assert len(sent(kfp_server, "GET", "/healthz")) == 1


@pytest.fixture
def token_server():
    server = KfpServer.start(token="right-token")
    yield server
    server.stop()


def test_401_without_a_token_says_so_and_how_to_pass_one(token_server, echo_package):
    with pytest.raises(InfrastructureError) as exc:
        client.submit(echo_package, host=token_server.url, params={"text": "x"})
    message = one_line(exc)
    assert "401" in message and "no token" in message and "--token" in message
    assert client.TOKEN_PATH_ENV in message
    assert token_server.requests() and all(
        header(r, "Authorization") is None for r in token_server.requests()
    )


def test_401_with_a_wrong_token_names_its_source(token_server, echo_package, tmp_path, monkeypatch):
    with pytest.raises(InfrastructureError) as exc:
        client.list_runs(token_server.url, token="wrong-token")
    message = one_line(exc)
    assert "401" in message and "--token" in message and "wrong-token" not in message
    assert header(token_server.requests()[-1], "Authorization") == "Bearer wrong-token"

    token_file = tmp_path / "token"
    token_file.write_text("stale-token\n")
    monkeypatch.setenv(client.TOKEN_PATH_ENV, str(token_file))
    with pytest.raises(InfrastructureError) as exc:
        client.submit(echo_package, host=token_server.url, params={"text": "x"})
    message = one_line(exc)
    assert "401" in message and str(token_file) in message


def test_the_right_token_from_either_source_is_sent(token_server, echo_package, tmp_path, monkeypatch):
    client.submit(echo_package, host=token_server.url, params={"text": "x"}, token="right-token")
    token_file = tmp_path / "token"
    token_file.write_text("right-token\n")
    monkeypatch.setenv(client.TOKEN_PATH_ENV, str(token_file))
    runs = client.list_runs(token_server.url)
    assert len(runs) == 1
    assert {header(r, "Authorization") for r in token_server.requests()} == {"Bearer right-token"}


def test_an_unreadable_token_file_is_a_config_error(kfp_server, tmp_path, monkeypatch):
    monkeypatch.setenv(client.TOKEN_PATH_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as exc:
        client.list_runs(kfp_server.url)
    assert client.TOKEN_PATH_ENV in one_line(exc)
    assert kfp_server.requests() == []


def test_a_pipeline_gone_from_the_server_is_one_line(kfp_server, echo_package, tmp_path):
    """The pipeline is listed but gone when its new version is uploaded (deleted meanwhile): KFP's 404."""
    client.submit(echo_package, host=kfp_server.url, params={"text": "x"})
    kfp_server.control(
        faults=[
            {"method": "POST", "path": "upload_version$", "status": 404, "message": "Pipeline abc not found"}
        ]
    )
    with pytest.raises(InfrastructureError) as exc:
        client.submit(echo_package, host=kfp_server.url, params={"text": "x"})
    message = one_line(exc)
    assert "404" in message and "Pipeline abc not found" in message and kfp_server.url in message


@pytest.mark.parametrize("status", [403, 500])
def test_other_http_errors_give_status_and_reason(kfp_server, status):
    kfp_server.control(
        faults=[{"method": "GET", "path": "/runs$", "status": status, "message": "nope, not today"}]
    )
    with pytest.raises(InfrastructureError) as exc:
        client.list_runs(kfp_server.url, "team-a")
    message = one_line(exc)
    assert str(status) in message and "nope, not today" in message
    if status == 403:
        assert "team-a" in message and "no token" in message


def test_an_unknown_experiment_is_one_line(kfp_server):
    with pytest.raises(ConfigError) as exc:
        client.list_runs(kfp_server.url, experiment="nope")
    message = one_line(exc)
    assert "'nope'" in message and "experiment" in message


@pytest.mark.parametrize(
    "cron",
    [
        "0 3 * * 1",  # Unix cron: 5 fields
        "0 0 3 * * 1 2024",
        "",
        "60 0 3 * * 1",
        "0 0 24 * * *",
        "0 0 3 0 * *",
        "0 0 3 * 13 *",
        "0 0 3 * * 7",
        "0 0 5-3 * * *",
        "0 */0 * * * *",
        "0 0 ? * * *",
        "0 0 3 L * *",
        "@daily",
    ],
)
def test_an_invalid_cron_is_refused_before_anything_is_sent(kfp_server, echo_package, cron):
    with pytest.raises(ConfigError) as exc:
        client.schedule(echo_package, host=kfp_server.url, cron=cron, params={"text": "x"})
    message = one_line(exc)
    assert "6 fields" in message and "second minute hour" in message
    assert kfp_server.requests() == []


def test_a_five_field_cron_gets_the_six_field_form():
    with pytest.raises(ConfigError) as exc:
        client.validate_cron("0 3 * * 1")
    assert "'0 0 3 * * 1'" in one_line(exc)


@pytest.mark.parametrize(
    ("cron", "normalized"),
    [
        ("0 0 3 * * 1", "0 0 3 * * 1"),
        (" 0  */15 * * * ? ", "0 */15 * * * ?"),
        ("30 5 1-5,10 1,15 JAN-jun MON-FRI", "30 5 1-5,10 1,15 JAN-jun MON-FRI"),
        ("0 0 0-23/2 ? * 0-6", "0 0 0-23/2 ? * 0-6"),
    ],
)
def test_valid_crons_pass(cron, normalized):
    assert client.validate_cron(cron) == normalized


@pytest.mark.parametrize("concurrency", [0, 11, True, "2"])
def test_max_concurrency_outside_kfps_bound_is_refused(kfp_server, echo_package, concurrency):
    with pytest.raises(ConfigError) as exc:
        client.schedule(
            echo_package,
            host=kfp_server.url,
            cron="0 0 3 * * 1",
            max_concurrency=concurrency,
            params={"text": "x"},
        )
    assert "max-concurrency" in one_line(exc)
    assert kfp_server.requests() == []


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"text": "x", "temperature": "1"}, "no parameter 'temperature'"),
        ({"text": "x", "repeat": "abc"}, "expected an integer"),
        ({"text": "x", "repeat": "2.5"}, "expected an integer"),
        ({"text": "x", "scale": "fast"}, "expected a finite number"),
        ({"text": "x", "loud": "maybe"}, "expected true or false"),
        ({"text": 3}, "expected a string"),
        ({"repeat": "2"}, "needs parameter(s) text"),
    ],
)
def test_bad_params_are_refused_before_anything_is_sent(kfp_server, echo_package, params, expected):
    with pytest.raises(ConfigError) as exc:
        client.submit(echo_package, host=kfp_server.url, params=params)
    assert expected in one_line(exc)
    assert kfp_server.requests() == []


def test_a_missing_or_foreign_package_is_a_config_error(kfp_server, tmp_path):
    cases = {
        tmp_path / "absent.yaml": "does not exist",
        tmp_path / "not.yaml": "not a KFP pipeline spec",
        tmp_path / "broken.yaml": "not valid YAML",
        tmp_path / "pipeline.json": ".yaml/.yml",
        tmp_path / "wrongfield.yaml": "not a valid KFP pipeline spec",
    }
    (tmp_path / "not.yaml").write_text("apiVersion: v1\nkind: ConfigMap\n")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    (tmp_path / "pipeline.json").write_text("{}")
    (tmp_path / "wrongfield.yaml").write_text("pipelineInfo: {name: p}\nroot: {}\nnotAField: 1\n")
    for path, expected in cases.items():
        with pytest.raises(ConfigError) as exc:
            client.submit(path, host=kfp_server.url, params={})
        message = one_line(exc)
        assert expected in message and path.name in message
    assert kfp_server.requests() == []


def test_a_bad_host_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        client.list_runs("localhost:8080")
    assert "http://" in one_line(exc)


def test_parse_params():
    assert client.parse_params(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    for bad in (["a"], ["=1"], ["a=1", "a=2"]):
        with pytest.raises(ConfigError) as exc:
            client.parse_params(bad)
        one_line(exc)


# -- listing -----------------------------------------------------------------------------------------------------


def test_list_runs_returns_the_runs_created(kfp_server, echo_package):
    first = client.submit(
        echo_package, host=kfp_server.url, experiment="a", params={"text": "1"}, run_name="r1"
    )
    second = client.submit(
        echo_package, host=kfp_server.url, experiment="b", params={"text": "2"}, run_name="r2"
    )
    kfp_server.control(
        set_run={"run_id": first["run_id"], "state": "SUCCEEDED", "finished_at": "2025-02-01T10:00:00Z"}
    )

    runs = client.list_runs(kfp_server.url)
    assert [(r["id"], r["name"]) for r in runs] == [
        (second["run_id"], "r2"),
        (first["run_id"], "r1"),
    ]  # newest first
    assert runs[1]["state"] == "SUCCEEDED" and runs[1]["finished"].startswith("2025-02-01T10:00:00")
    assert runs[0]["state"] == "PENDING" and runs[0]["finished"] is None and runs[0]["created"]
    assert set(runs[0]) == {"id", "name", "state", "created", "finished", "experiment_id"}

    only_a = client.list_runs(kfp_server.url, experiment="a")
    assert [r["id"] for r in only_a] == [first["run_id"]]
    assert len(client.list_runs(kfp_server.url, limit=1)) == 1


def test_the_ui_address_can_differ_from_the_api(kfp_server, echo_package, monkeypatch):
    monkeypatch.setenv(client.UI_ENDPOINT_ENV, "https://kubeflow.example.org/pipeline")
    done = client.submit(echo_package, host=kfp_server.url, params={"text": "x"})
    assert done["url"] == f"https://kubeflow.example.org/pipeline/#/runs/details/{done['run_id']}"
    done = client.submit(echo_package, host=kfp_server.url, params={"text": "x"}, ui_host="http://ui:8080/")
    assert done["url"].startswith("http://ui:8080/#/runs/details/")


def test_core_imports_without_kfp_loaded():
    import subprocess
    import sys

    code = "import sys, w4s.pipelines.client; assert 'kfp' not in sys.modules, 'kfp imported at module level'"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )
    assert done.returncode == 0, done.stderr
