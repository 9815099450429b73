"""What a long-running server writes to its log: a policy failing on every call, a flood of refusals of one kind
with a different mistake inside it, a lenient Gr00tPolicy given an unknown option on every call, and a peer that
never reads its replies."""

from __future__ import annotations

import contextlib
import logging
import re
import time

import msgpack
import pytest
import zmq
from reference_peer import EchoPolicy, libero_like_observation
from serving import running_server

from gr00t_client import PolicyClient, PolicyServerError
from gr00t_server.serving.endpoints import RateLimitedLog

SERVER_LOG = "gr00t_server.serving.server"


class AlwaysFails(EchoPolicy):
    def _get_action(self, observation, options=None):
        raise RuntimeError("CUDA out of memory (simulated)")


def test_a_policy_failing_on_every_call_logs_a_few_tracebacks_and_a_count_not_one_per_request(caplog):
    caplog.set_level(logging.INFO, logger=SERVER_LOG)
    observation = libero_like_observation(height=32, width=32)
    with running_server(AlwaysFails()) as server, PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000) as client:
        for _ in range(40):
            with pytest.raises(PolicyServerError, match="internal error"):
                client.get_action(observation)
    records = [r for r in caplog.records if r.name == SERVER_LOG]
    tracebacks = [r for r in records if r.exc_info]
    assert 1 <= len(tracebacks) <= 5  # was 40: a traceback per request, ~86 GB a day at this server's rate
    assert any("similar messages were suppressed" in r.getMessage() and r.getMessage().startswith("35 ") for r in records)
    assert any("stopped after 41 requests: 40 errors (40 internal;" in r.getMessage() for r in records)  # + its question


@contextlib.contextmanager
def kept_messages(name):
    """A logger of its own whose messages are appended to the yielded list (and not passed on)."""
    logger = logging.getLogger(name)
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, seen
    finally:
        logger.removeHandler(handler)


def test_a_new_kind_of_refusal_is_logged_inside_a_flood_and_the_count_is_reported():
    with kept_messages("test.rate_limited") as (logger, seen):
        log = RateLimitedLog(logger, per_window=3, window_s=3600)
        for i in range(50):
            log.warning("bad shape %d", i, kind=("get_action", "ObservationError"))
        log.warning("unknown endpoint", kind=("get_actoin", "RequestError"))  # another client's one-off mistake
        log.warning("bad shape again", kind=("get_action", "ObservationError"))
        log.flush()
    assert seen[:4] == ["bad shape 0", "bad shape 1", "bad shape 2", "unknown endpoint"]
    assert re.fullmatch(r"48 similar messages were suppressed (at|between) \d\d:\d\d:\d\d.*", seen[4]), seen


def test_a_lenient_gr00t_policy_warns_of_an_unknown_option_once_not_per_call(tiny_checkpoint, caplog):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(model_path=tiny_checkpoint, embodiment_tag="libero_sim", device="cpu", strict=False)
    observation = example_observation(tiny_checkpoint, "libero_sim")
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        policy.get_action(observation, {"Denoising_steps": 2})
    policy.get_action(observation, {"x" * 20000: 1})
    warnings = [r.getMessage() for r in caplog.records if "unknown options" in r.getMessage()]
    assert len(warnings) == 2 and "Denoising_steps" in warnings[0]
    assert len(warnings[1]) < 500  # a 20,000-character key is cut


class FailsTwoWays(EchoPolicy):
    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls <= 10:
            raise RuntimeError("CUDA out of memory (simulated)")
        raise TypeError("shape mismatch (a new bug)")


def test_each_server_logs_its_own_first_failures_and_a_new_error_is_not_hidden_behind_an_old_one(caplog):
    caplog.set_level(logging.INFO, logger=SERVER_LOG)
    observation = libero_like_observation(height=32, width=32)
    for _ in range(2):  # a second server in the same process starts with its own counts
        caplog.clear()
        with running_server(FailsTwoWays()) as server, PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000) as client:
            for _ in range(12):
                with pytest.raises(PolicyServerError):
                    client.get_action(observation)
        failures = [str(r.exc_info[1]) for r in caplog.records if r.name == SERVER_LOG and r.exc_info]
        assert failures[0] == "CUDA out of memory (simulated)" and "shape mismatch (a new bug)" in failures


class FailsEachStepAnew(EchoPolicy):
    def __init__(self, padding: str = "") -> None:
        super().__init__()
        self.padding = padding

    def _get_action(self, observation, options=None):
        self.calls += 1
        raise RuntimeError(f"controller fault at step {self.calls}{self.padding}")


def test_failures_whose_message_names_the_step_are_one_kind_and_rate_limited(caplog):
    """docs/serving.md: internal errors at most 5 a minute, the first of each endpoint and error type always; a kind
    that held the message made each step's failure a new kind, every one logged with its traceback."""
    caplog.set_level(logging.INFO, logger=SERVER_LOG)
    with running_server(FailsEachStepAnew()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        for _ in range(30):
            with pytest.raises(PolicyServerError, match="internal error"):
                client.get_action({})
    tracebacks = [r for r in caplog.records if r.name == SERVER_LOG and r.exc_info]
    assert 1 <= len(tracebacks) <= 5, [str(r.exc_info[1]) for r in tracebacks]


class RefusesWithAHugeMessage(EchoPolicy):
    def _get_action(self, observation, options=None):
        raise ValueError("obs=" + "0.25, " * 200_000)  # a bare ValueError: a refusal whose first shows its traceback


@pytest.mark.parametrize("policy", [FailsEachStepAnew(" obs=" + "0.25, " * 200_000), RefusesWithAHugeMessage()],
                         ids=["internal error", "refusal"])
def test_a_failure_whose_message_is_megabytes_long_is_logged_cut_with_its_traceback(caplog, policy):
    caplog.set_level(logging.INFO, logger=SERVER_LOG)
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError):
            client.get_action({})
    assert "Traceback (most recent call last)" in caplog.text and "_get_action" in caplog.text
    assert "more characters" in caplog.text
    assert len(caplog.text) < 20_000  # was the whole 1.2 MB message


def test_the_first_window_opens_at_the_first_message_on_a_machine_just_booted(monkeypatch):
    """The first window was taken to start at monotonic time 0 (boot): on a machine up for less than the window,
    every message past the first window's share was counted from boot and reported as suppressed over that span."""
    from gr00t_server.serving import endpoints

    clock = [5.0]  # five seconds after boot
    monkeypatch.setattr(endpoints.time, "monotonic", lambda: clock[0])
    with kept_messages("test.rate_limited_boot") as (logger, seen):
        log = RateLimitedLog(logger, per_window=2, window_s=10.0)
        for i in range(4):
            log.warning("refused %d", i, kind="same")
        clock[0] = 12.0  # 7 s after the first message: the same window (it opened at 5 s, not at boot)
        log.warning("refused again", kind="same")
        log.flush()
    assert seen[:2] == ["refused 0", "refused 1"] and len(seen) == 3
    assert seen[2].startswith("3 similar messages were suppressed "), seen


def test_a_peer_that_never_reads_its_replies_gets_a_few_log_lines_and_a_count_not_one_per_request(caplog):
    caplog.set_level(logging.INFO, logger="gr00t_server.serving")
    requests = 3000
    with running_server(EchoPolicy()) as server:
        context = zmq.Context()
        peer = context.socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.setsockopt(zmq.RCVHWM, 1)
        peer.setsockopt(zmq.RCVBUF, 4096)
        peer.connect(f"tcp://127.0.0.1:{server.port}")
        request = msgpack.packb({"endpoint": "get_server_info"})
        for _ in range(requests):
            peer.send_multipart([b"", request])  # its replies are never read
        deadline = time.monotonic() + 30
        while server.stats.snapshot()["requests"] < requests and time.monotonic() < deadline:
            time.sleep(0.05)
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000) as client:
            assert client.ping()  # another client is still answered
        dropped = server.stats.snapshot()["undelivered"]
        peer.close()
        context.term()
    lines = [r.getMessage() for r in caplog.records if r.name == "gr00t_server.serving" and "reply to" in r.getMessage()]
    assert dropped > 100
    assert len(lines) <= 40, f"{len(lines)} lines for {dropped} dropped replies"  # was one per dropped reply
    assert "its queue of unread replies is full (32, the send high-water mark)" in lines[0]
    assert "127.0.0.1" in lines[0]
    summary = [r.getMessage() for r in caplog.records if "similar messages were suppressed" in r.getMessage()]
    assert sum(int(text.split()[0]) for text in summary) == dropped - len(lines)


class OneLineTracebacks(logging.Formatter):
    """What log shippers configure: the traceback escaped onto the record's own line."""

    def formatException(self, ei):
        return "EXC=" + repr(super().formatException(ei))


def test_an_operators_formatter_formats_the_bounded_traceback_of_an_internal_error():
    """The bounded traceback was put in the record's cache, so a handler's own formatException was never called
    (17 raw lines where the operator's formatter writes one), while a formatter reading exc_info itself got the
    whole 50,000-character message."""
    logger = logging.getLogger("test.bounded_traceback")
    logger.propagate = False
    lines, handler = [], logging.Handler()
    handler.setFormatter(OneLineTracebacks("%(message)s"))
    handler.emit = lambda record: lines.append(handler.format(record))
    logger.addHandler(handler)
    try:
        try:
            try:
                raise KeyError("y" * 30_000)
            except KeyError as inner:
                raise RuntimeError("x" * 50_000) from inner
        except RuntimeError as exc:
            RateLimitedLog(logger).warning("internal error in %s", "get_action", exc_info=exc, kind="k")
            original = exc
    finally:
        logger.removeHandler(handler)
    (line,) = lines
    assert line.count("\n") == 1 and "EXC='Traceback (most recent call last)" in line  # the operator's own format
    assert "RuntimeError: " + "x" * 1000 + "... (49000 more characters)" in line
    assert "KeyError: " in line and "more characters)" in line.split("KeyError: ")[1]  # the cause cut too
    assert "test_an_operators_formatter_formats" in line  # the frames kept
    assert len(line) < 5_000
    assert str(original) == "x" * 50_000  # the exception itself is not changed


def _self_caused():
    exc = RuntimeError("x" * 5000)
    exc.__cause__ = exc  # `raise exc from exc`
    return exc


def _deep_chain():
    top = exc = RuntimeError("top")
    for i in range(1500):
        cause = ValueError(f"level {i}")
        exc.__cause__, exc = cause, cause
    return top


class _RefusesSubclasses(Exception):
    def __init_subclass__(cls, **kwargs):
        raise ValueError("no subclasses")


@pytest.mark.parametrize("make, kept", [
    (_self_caused, "RuntimeError: " + "x" * 900),
    (_deep_chain, "ValueError: level 1499"),
    (lambda: _RefusesSubclasses("y" * 5000), "y" * 900),
    (lambda: ExceptionGroup("several", [RuntimeError("SUB-C cuda oom " + "z" * 200_000)]), "SUB-C cuda oom"),
], ids=["a cause that is itself", "a chain of 1500", "a class that takes no subclass", "an exception group"])
def test_an_odd_exception_is_logged_bounded_by_the_operators_formatter_and_never_breaks_the_log(make, kept):
    """`raise exc from exc` made the bounded stand-in recurse for ever: the worker's last-resort handler logged 200-line
    RecursionError tracebacks past the rate limit and counted errors twice; a group's members were logged whole."""
    logger = logging.getLogger(f"test.odd_exceptions.{make.__name__}")
    logger.propagate, saved = False, logger.handlers[:]
    logger.handlers.clear()  # only this formatter: the first handler to format a record caches its traceback text
    lines, handler = [], logging.Handler()
    handler.setFormatter(OneLineTracebacks("%(message)s"))
    handler.emit = lambda record: lines.append(handler.format(record))
    logger.addHandler(handler)
    try:
        exc = make()
        try:
            raise exc
        except BaseException as raised:
            assert RateLimitedLog(logger).warning("internal error in %s", "get_action", exc_info=raised, kind="k")
    finally:
        logger.handlers[:] = saved
    (line,) = lines
    assert line.startswith("internal error in get_action\nEXC=") and kept in line
    assert len(line) < 200_000 and ("more characters" in line or make is _deep_chain)


def test_a_long_note_is_cut_and_a_long_messages_note_is_kept():
    from gr00t_server.serving.endpoints import bounded_exception

    exc = RuntimeError("short")
    exc.add_note("n" * 5000)
    bounded = bounded_exception(exc)
    assert bounded.__notes__ == ["n" * 1000 + "... (4000 more characters)"] and str(bounded) == "short"
    exc = RuntimeError("m" * 5000)
    exc.add_note("which GPU: 0")
    assert bounded_exception(exc).__notes__ == ["which GPU: 0"]


FORGED_LINE = "2026-01-01 00:00:00,000 INFO:gr00t_server.serving.server:FORGED \x1b[31mred\x1b[0m"


class NamesTheClientsText(EchoPolicy):
    """Words its error with text the client chose (an option's value), as custom policies word a bad instruction."""

    def __init__(self, error: type) -> None:
        super().__init__()
        self.error = error

    def _get_action(self, observation, options=None):
        raise self.error(f"cannot follow {(options or {}).get('tag')}")


@pytest.mark.parametrize("error", [RuntimeError, ValueError], ids=["internal error", "refusal"])
def test_a_logged_traceback_escapes_client_text_so_it_cannot_forge_a_log_line(caplog, error):
    """The first failure of a kind is logged with its traceback, whose last line printed the message raw: a client's
    newline and terminal escapes in it wrote forged lines into the server's log."""
    caplog.set_level(logging.INFO, logger=SERVER_LOG)
    policy = NamesTheClientsText(error)
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError):
            client.get_action({}, options={"tag": "x\n" + FORGED_LINE})
    assert "Traceback (most recent call last)" in caplog.text and "_get_action" in caplog.text
    assert [line for line in caplog.text.splitlines() if "FORGED" in line and not line.startswith(("ERROR", "WARNING"))
            and "cannot follow x\\n2026" not in line] == []
    assert "\x1b" not in caplog.text and "cannot follow x\\n2026-01-01" in caplog.text


def test_a_note_or_a_chained_message_holding_a_newline_is_escaped_in_the_logged_traceback():
    logger = logging.getLogger("test.escaped_traceback")
    logger.propagate = False
    lines, handler = [], logging.Handler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit = lambda record: lines.extend(handler.format(record).splitlines())
    logger.addHandler(handler)
    try:
        try:
            try:
                raise KeyError("inner")
            except KeyError as inner:
                raise RuntimeError("cause\n" + FORGED_LINE) from inner
        except RuntimeError as exc:
            exc.add_note("note\n" + FORGED_LINE)
            RateLimitedLog(logger).warning("internal error in %s", "get_action", exc_info=exc, kind="k")
            original = exc
        group = ExceptionGroup("several", [RuntimeError("member\n" + FORGED_LINE)])
        group.add_note("group note\n" + FORGED_LINE)  # a group is logged as its rendering: its notes escaped too
        try:
            raise group
        except ExceptionGroup as raised:
            RateLimitedLog(logger).warning("internal error in %s", "get_action", exc_info=raised, kind="k")
    finally:
        logger.removeHandler(handler)
    assert not [line for line in lines if line.lstrip(" |").startswith("2026-01-01")], lines
    assert not any("\x1b" in line for line in lines)
    assert any(line.startswith("RuntimeError: cause\\n2026-01-01") for line in lines)
    assert any(line.startswith("note\\n2026-01-01 00:00:00,000 INFO:gr00t_server.serving.server:FORGED \\x1b[31m")
               for line in lines)
    assert any("RuntimeError: member\\n" in line for line in lines)
    assert any(line.endswith("group note\\n2026-01-01 00:00:00,000 INFO:gr00t_server.serving.server:FORGED "
                              "\\x1b[31mred\\x1b[0m") for line in lines)
    assert str(original).startswith("cause\n")  # the exception itself is not changed


def test_the_suppressed_count_names_when_those_messages_came_not_the_last_window(monkeypatch):
    """'20 similar messages were suppressed in the last 10 s' was written 12 s after the burst (or an hour after it,
    at shutdown): nothing had been suppressed in those 10 s, and an operator looked at the wrong minute."""
    from gr00t_server.serving import endpoints

    noon = time.mktime((2026, 5, 28, 12, 0, 0, 0, 0, -1))  # local time, as the log's own times
    clock = [0.0]
    monkeypatch.setattr(endpoints.time, "monotonic", lambda: 500.0 + clock[0])
    monkeypatch.setattr(endpoints.time, "time", lambda: noon + clock[0])
    with kept_messages("test.rate_limited_span") as (logger, seen):
        log = RateLimitedLog(logger, per_window=2, window_s=10.0)
        for i in range(6):
            clock[0] = i * 0.9  # the suppressed ones at 1.8, 2.7, 3.6 and 4.5 s
            log.warning("refused %d", i, kind="same")
        clock[0] = 16.5  # 12 s after the last of them
        log.warning("refused later", kind="same")
        for i in range(3):
            clock[0] = 17.0 + i * 0.2  # 2 suppressed within a second, reported by flush() an hour later
            log.warning("refused again %d", i, kind="same")
        clock[0] = 3600.0
        log.flush()
        for i in range(3):  # and one reported the next day
            clock[0] = 3700.0 + i
            log.warning("refused the next day %d", i, kind="same")
        clock[0] = 86_400.0
        log.flush()
    assert seen == ["refused 0", "refused 1", "4 similar messages were suppressed between 12:00:01 and 12:00:04",
                    "refused later", "refused again 0", "2 similar messages were suppressed at 12:00:17",
                    "refused the next day 0", "refused the next day 1",
                    "1 similar messages were suppressed at 2026-05-28 13:01:42"]


def test_the_suppressed_span_keeps_its_order_and_length_when_the_wall_clock_is_stepped_back(monkeypatch):
    """An NTP step back of an hour during a flood was reported 'between 12:00:01 and 11:00:02': the first and last
    suppressed messages were stamped on the wall clock, whose order a step breaks."""
    from gr00t_server.serving import endpoints

    noon = time.mktime((2026, 5, 28, 12, 0, 0, 0, 0, -1))  # local time, as the log's own times
    clock, stepped_back = [0.0], [0.0]
    monkeypatch.setattr(endpoints.time, "monotonic", lambda: 500.0 + clock[0])
    monkeypatch.setattr(endpoints.time, "time", lambda: noon + clock[0] - stepped_back[0])
    with kept_messages("test.rate_limited_step") as (logger, seen):
        log = RateLimitedLog(logger, per_window=1, window_s=3600.0)
        log.warning("refused", kind="same")
        clock[0] = 1.8
        log.warning("refused", kind="same")  # suppressed at 12:00:01.8
        stepped_back[0] = 3600.0  # NTP steps the wall clock back an hour
        clock[0] = 2.7
        log.warning("refused", kind="same")  # suppressed 0.9 s later
        clock[0] = 3.0
        log.flush()
    assert seen == ["refused", "2 similar messages were suppressed between 11:00:01 and 11:00:02"]
