"""The ``agent`` object a workflow's ``solver(agent, task)`` receives, inside the sandbox.

Stdlib only. Every LLM call is a request over the private channel to the host, which holds the
keys, the budget and the cache; nothing here can reach the executor directly. The API follows the
W4S reference workflows, so their code runs unchanged.
"""

from __future__ import annotations

import _thread
import json
import os
import re
import signal
import time

import protocol

_RUNNER = r"""
import json, resource, sys, io, contextlib, ast, ctypes, os, signal
ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the sample
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0 (exec made it dumpable): siblings keep out
if os.getppid() == 1:
    sys.exit(70)
limits = json.loads(sys.argv[1])
resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"] + 1))
code = sys.stdin.read()
out = io.StringIO()
value, error = None, None
try:
    tree = ast.parse(code, "<code>")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    env = {"__name__": "__main__"}
    with contextlib.redirect_stdout(out):
        exec(compile(tree, "<code>", "exec"), env)
        if last is not None:
            value = eval(compile(last, "<code>", "eval"), env)
        elif callable(env.get("solution")):
            value = env["solution"]()
except BaseException as exc:
    error = f"{type(exc).__name__}: {exc}"
printed = out.getvalue()[-20000:]
sys.__stdout__.write("\n__W4S_RESULT__" + json.dumps({"value": None if value is None else str(value)[:20000], "error": error, "stdout": printed}))
"""

_SPAN_TEXT = 2000  # characters of code and output a trace span keeps
_BLOCK = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)


class AgentError(RuntimeError):
    """The host refused or failed a request (budget spent, executor error, bad arguments)."""


class _Channel:
    """Request/response over the sample's private socket; safe for workflows that call from threads.

    There is no reader thread: a thread waiting for its reply reads the socket itself (the leader),
    hands other threads' replies to them, and passes the role on once its own reply has arrived.
    A sequential workflow therefore makes each call with one send and one receive, no thread switch.
    Built on ``_thread`` locks: importing ``threading`` would add its fork handler to every job.
    """

    def __init__(self, sock):
        self._sock = sock
        self._send_lock = _thread.allocate_lock()
        self._state = _thread.allocate_lock()  # guards the fields below
        self._replies: dict[int, dict] = {}
        self._wakers: dict[int, object] = {}  # call id -> lock its thread blocks on while it waits
        self._next_id = 0
        self._reading = False
        self._closed: str | None = None

    def notify(self, message: dict) -> None:
        """Send a message that gets no reply (a trace span); never fails the workflow."""
        try:
            with self._send_lock:
                protocol.send(self._sock, message)
        except (OSError, protocol.ProtocolError, ValueError, TypeError):
            pass

    def request(self, method: str, params: dict):
        waker = _thread.allocate_lock()
        waker.acquire()
        with self._state:
            self._next_id += 1
            call_id = self._next_id
            self._wakers[call_id] = waker
        try:
            with self._send_lock:
                protocol.send(self._sock, {"op": "call", "id": call_id, "method": method, "params": params})
            reply = self._await(call_id, waker)
        finally:
            with self._state:
                self._wakers.pop(call_id, None)
                self._replies.pop(call_id, None)
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise AgentError(f"{error.get('type', 'Error')}: {error.get('message', '')}")
        return protocol.decode(reply.get("value"))

    def _wake(self, waker) -> None:  # with self._state held
        if waker.locked():
            waker.release()

    def _await(self, call_id: int, waker) -> dict:
        while True:
            with self._state:
                if call_id in self._replies:
                    return self._replies.pop(call_id)
                if self._closed is not None:
                    raise AgentError(self._closed)
                if not self._reading:
                    self._reading = True  # this thread reads until its own reply arrives
                    break
            waker.acquire()  # until the leader hands over a reply or the reading role
        try:
            while True:
                try:
                    message = protocol.recv(self._sock)
                except (EOFError, OSError, protocol.ProtocolError) as exc:
                    with self._state:
                        self._closed = f"channel to the host closed: {exc}"
                    raise AgentError(self._closed) from None
                if message.get("id") == call_id:
                    return message
                with self._state:
                    other = self._wakers.get(message.get("id"))
                    if other is not None:
                        self._replies[message["id"]] = message
                        self._wake(other)
        finally:
            with self._state:
                self._reading = False
                for other in self._wakers.values():  # a waiting thread takes over reading
                    self._wake(other)


def _as_messages(messages) -> list[dict]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if isinstance(messages, dict):
        return [messages]
    out = []
    for message in messages:
        if isinstance(message, str):
            out.append({"role": "user", "content": message})
        else:
            out.append({"role": str(message.get("role", "user")), "content": str(message.get("content", ""))})
    return out


def _parse_json(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise ValueError(f"the executor's reply holds no JSON object: {text[:200]!r}") from None
        value = json.loads(text[start : end + 1])
    if not isinstance(value, dict):
        raise ValueError(f"the executor's reply is JSON but not an object: {text[:200]!r}")
    return value


class Agent:
    """What ``solver(agent, task)`` may use. Everything else is out of reach."""

    def __init__(self, channel: _Channel, python: str, code_limits: dict):
        self._channel = channel
        self._python = python
        self._code_limits = code_limits

    # --- LLM calls -----------------------------------------------------------------------------
    def call_llm(
        self,
        messages,
        temperature: float = 1.0,
        num_of_response: int = 1,
        response_format: str = "text",
        agent_role: str | None = None,
        instructions: str | None = None,
        max_completion_tokens: int | None = None,
    ) -> list:
        """Ask the executor; returns ``num_of_response`` strings (dicts with ``response_format='json'``)."""
        if response_format not in ("text", "json"):
            raise ValueError("response_format must be 'text' or 'json'")
        replies = self._channel.request(
            "call_llm",
            {
                "messages": _as_messages(messages),
                "temperature": float(temperature),
                "n": int(num_of_response),
                "response_format": response_format,
                "agent_role": agent_role,
                "instructions": instructions,
                "max_completion_tokens": max_completion_tokens,
            },
        )
        if response_format == "json":
            return [_parse_json(text) for text in replies]
        return replies

    def call_json_format_llm(
        self,
        messages,
        temperature: float = 1.0,
        num_of_response: int = 1,
        agent_role: str | None = None,
        return_dict_keys: list | None = None,
        instructions: str | None = None,
    ) -> list[dict]:
        """Like :meth:`call_llm` but asks for a JSON object with ``return_dict_keys`` and parses it."""
        keys = list(return_dict_keys or [])
        hint = ""
        if keys:
            hint = "Reply with one JSON object with exactly these keys: " + ", ".join(keys) + "."
        full = hint if not instructions else f"{instructions}\n{hint}".strip()
        replies = self.call_llm(
            messages, temperature, num_of_response, "json", agent_role, full or None, None
        )
        for reply in replies:
            for key in keys:
                reply.setdefault(key, "")
        return replies

    # --- code ----------------------------------------------------------------------------------
    def execute_code(self, code: str, timeout: float = 5.0) -> str:
        """Run ``code`` in a fresh interpreter under its own limits.

        Returns the value of ``solution()`` (when the code defines it) or of the final expression,
        as a string; otherwise what the code printed. Errors come back as ``"Error: Type: msg"``.
        """
        started = time.time_ns()
        result = self._execute(code, timeout)
        self._channel.notify(
            {
                "op": "span",
                "name": "execute_code",
                "start_ns": started,
                "end_ns": time.time_ns(),
                "input": str(code)[:_SPAN_TEXT],
                "output": result[:_SPAN_TEXT],
            }
        )
        return result

    def _execute(self, code: str, timeout: float) -> str:
        import subprocess  # here, not at the top: it imports threading, whose fork handler every job would run

        timeout = max(0.1, min(float(timeout), float(self._code_limits["timeout"])))
        limits = {"cpu": max(1, int(timeout) + 1)}
        try:
            proc = subprocess.Popen(
                [self._python, "-I", "-S", "-c", _RUNNER, json.dumps(limits)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env={},
            )
        except OSError as exc:
            return f"Error: could not start the code runner: {exc}"
        try:
            out, _ = proc.communicate(code.encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.communicate()
            return f"Error: TimeoutError: the code ran longer than {timeout:g} s"
        finally:
            _kill_group(proc.pid)
        text = out.decode(errors="replace")
        marker = text.rfind("\n__W4S_RESULT__")
        if marker < 0:
            return f"Error: the code exited early (status {proc.returncode})"
        result = json.loads(text[marker + len("\n__W4S_RESULT__") :])
        if result["error"]:
            return f"Error: {result['error']}"
        if result["value"] is not None:
            return result["value"]
        return result["stdout"]

    def test_on_public_test(self, task: str, solution: str, entry_point: str, test_loop: int = 3) -> dict:
        """Run ``solution`` on the task's public tests; on failure ask the executor to fix it.

        Returns ``{"result": bool, "solution": str, "feedback": str}``.
        """
        tests = self._channel.request("public_tests", {"task": task, "entry_point": entry_point})
        feedback = ""
        for attempt in range(max(1, int(test_loop))):
            program = f"{solution}\n\ncandidate = {entry_point}\n" + "\n".join(tests) + "\nprint('__ok__')"
            output = self.execute_code(program, timeout=self._code_limits["timeout"])
            if output.strip().endswith("__ok__") and not output.startswith("Error:"):
                return {"result": True, "solution": solution, "feedback": ""}
            feedback = output[-2000:]
            if attempt == test_loop - 1:
                break
            reply = self.call_llm(
                [
                    {
                        "role": "user",
                        "content": (
                            f"{task}\n\nThis solution fails a public test:\n```python\n{solution}\n```\n"
                            f"Error:\n{feedback}\n\nReturn the corrected full function `{entry_point}` "
                            "in one ```python block."
                        ),
                    }
                ],
                temperature=0.0,
            )[0]
            solution = self.extract_code_block(reply, entry_point)
        return {"result": False, "solution": solution, "feedback": feedback}

    # --- text helpers --------------------------------------------------------------------------
    @staticmethod
    def extract_code_block(text: str, entry_point: str | None = None) -> str:
        """The fenced code block that defines ``entry_point`` (else the last block, else the text)."""
        blocks = _BLOCK.findall(text or "")
        if entry_point:
            for block in reversed(blocks):
                if re.search(rf"def\s+{re.escape(entry_point)}\s*\(", block):
                    return block.strip("\n")
        if blocks:
            return blocks[-1].strip("\n")
        return (text or "").strip()

    @staticmethod
    def extract_answer_str(text: str) -> str:
        """The final answer in a reply: ``\\boxed{..}``, ``#### x``, "answer is x", else the last number."""
        text = text or ""
        boxed = text.rfind("\\boxed{")
        if boxed >= 0:
            depth, start = 0, boxed + len("\\boxed{")
            for i in range(start, len(text)):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    if depth == 0:
                        return text[start:i].strip()
                    depth -= 1
        for pattern in (r"####\s*(.+)", r"[Aa]nswer\s*(?:is|:)\s*\**\s*([^\n]+)"):
            found = re.findall(pattern, text)
            if found:
                return found[-1].strip().rstrip(".").strip("*").strip()
        numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
        if numbers:
            return numbers[-1].replace(",", "")
        return text.strip()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
