import socket

import pytest

from w4s.errors import ConfigError, InfrastructureError
from w4s.tasks import datasets


def test_unreachable_source_fails_clearly_and_leaves_nothing_partial(tmp_path, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setitem(
        datasets.SOURCES, "gsm8k", {"gsm8k/test.jsonl": f"http://127.0.0.1:{port}/test.jsonl"}
    )
    with pytest.raises(InfrastructureError, match="could not download .* this needs internet access"):
        datasets.pull(tmp_path, ["gsm8k"], timeout_s=5)
    assert list((tmp_path / "gsm8k").iterdir()) == []


def test_served_files_land_in_the_layout(tmp_path, monkeypatch):
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    (served / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/test.jsonl"
        monkeypatch.setitem(datasets.SOURCES, "gsm8k", {"gsm8k/test.jsonl": url})
        target = datasets.pull(tmp_path / "data", ["gsm8k"])
    finally:
        server.shutdown()
    assert (target / "gsm8k" / "test.jsonl").read_text().startswith('{"question"')


def test_unknown_task():
    with pytest.raises(ConfigError, match="unknown task"):
        datasets.pull("/tmp/unused", ["gsm9k"])
