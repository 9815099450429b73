"""Run the code blocks of README.md and docs/*.md as written: the engine behind tests/e2e/test_docs_run.py.

Every ```python, ```bash, ```sh and ```console block is a candidate. Blocks of one document run in order in one
sandbox folder, so a later block sees the datasets, checkpoints and servers an earlier one made. HTML comments
right before a block (blank lines between allowed) steer it:

    <!-- docs-test: skip gpu -->                 never run; reported as skipped, with the reason, by block name
    <!-- docs-test: defer -->                    run after the document's other blocks (e.g. a client snippet
                                                 shown before the server section it talks to)
    <!-- docs-test: replace A => B -->           run with text A replaced by B (shrink episode counts, ...)
    <!-- docs-test: given dataset /data/x -->    record a small Meta-World reach dataset there first
    <!-- docs-test: timeout 120 -->              seconds this block may take (default 180)

Rewrites applied to every block, so the docs keep their natural spellings: /tmp/, /data/ and /etc/gr00t/ live
under the sandbox, HOME is the sandbox's home/, the host names gpu-box and 0.0.0.0 mean 127.0.0.1, and port 5555
is a free port of this document (also given to gr00t-eval open-loop/rollout commands that leave it to its
default). `gr00t-server serve` commands start in the background (the runner waits for
their ready line and stops them when the document ends; a document's serve commands are alternatives on one
port, so a new one replaces the previous one), and a serve command without --port gets the document's port.
Python blocks run as a script file (so a missing `if __name__ == "__main__":` guard fails as it would for a user).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]
RUNNABLE = {"python", "bash", "sh", "console"}
DEFAULT_TIMEOUT_S = 180.0
SERVER_READY = "Server is ready and listening on"
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)")
_KNOWN = ("skip", "defer", "replace", "given", "timeout")


class DocsTestError(AssertionError):
    """A block that failed as run: names the block, the command, the exit code and the output's tail."""


@dataclass(frozen=True)
class DocBlock:
    """One fenced code block and the docs-test directives written right before it."""

    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    directives: Tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"

    def _values(self, keyword: str) -> List[str]:
        return [d[len(keyword):].strip() for d in self.directives if d.split(None, 1)[0] == keyword]

    @property
    def skip_reason(self) -> Optional[str]:
        reasons = self._values("skip")
        return (reasons[0] or "marked skip") if reasons else None

    @property
    def deferred(self) -> bool:
        return bool(self._values("defer"))

    @property
    def replacements(self) -> List[Tuple[str, str]]:
        pairs = []
        for value in self._values("replace"):
            old, sep, new = value.partition("=>")
            pairs.append((old.strip(), new.strip()))
        return pairs

    @property
    def given_datasets(self) -> List[str]:
        return [v.split(None, 1)[1].strip() for v in self._values("given") if v.startswith("dataset ")]

    @property
    def timeout_s(self) -> float:
        values = self._values("timeout")
        return float(values[-1]) if values else DEFAULT_TIMEOUT_S

    def directive_errors(self) -> List[str]:
        """Directives this runner does not understand, each said with what is expected."""
        errors = []
        for directive in self.directives:
            keyword = directive.split(None, 1)[0] if directive else ""
            if keyword not in _KNOWN:
                errors.append(f"{self.name}: unknown docs-test directive {directive!r}; expected one of {list(_KNOWN)}")
            elif keyword == "replace" and "=>" not in directive:
                errors.append(f"{self.name}: 'replace' needs 'OLD => NEW', got {directive!r}")
            elif keyword == "given" and not directive[len("given"):].strip().startswith("dataset "):
                errors.append(f"{self.name}: 'given' supports 'given dataset PATH', got {directive!r}")
            elif keyword == "timeout":
                try:
                    float(directive.split(None, 1)[1])
                except (IndexError, ValueError):
                    errors.append(f"{self.name}: 'timeout' needs seconds, got {directive!r}")
        return errors


def extract_blocks(doc: Path) -> List[DocBlock]:
    """The runnable fenced blocks of a markdown file, each with the directives right before it."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks: List[DocBlock] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, lang = match.group(1), match.group(2).lower()
        start = index
        index += 1
        body: List[str] = []
        while index < len(lines) and not lines[index].strip().startswith("```"):
            body.append(lines[index][len(indent):] if lines[index].startswith(indent) else lines[index])
            index += 1
        index += 1  # the closing fence
        if lang in RUNNABLE:
            blocks.append(DocBlock(doc, start + 1, lang, "\n".join(body) + "\n", _directives_before(lines, start)))
    return blocks


def _directives_before(lines: List[str], fence: int) -> Tuple[str, ...]:
    found: List[str] = []
    cursor = fence - 1
    while cursor >= 0:
        text = lines[cursor]
        match = _DIRECTIVE.match(text)
        if match:
            found.append(match.group(1))
        elif text.strip():
            break
        cursor -= 1
    return tuple(reversed(found))


def documents() -> List[Path]:
    """README.md and docs/*.md, in a stable order."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def ordered_blocks(doc: Path) -> List[DocBlock]:
    """A document's blocks in the order they run: as written, deferred ones last."""
    blocks = extract_blocks(doc)
    return [b for b in blocks if not b.deferred] + [b for b in blocks if b.deferred]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _commands(script: str) -> List[str]:
    """Shell lines with backslash continuations joined; blank lines dropped, comments kept (bash ignores them)."""
    commands, pending = [], ""
    for raw in script.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        command = (pending + raw).strip()
        pending = ""
        if command:
            commands.append(command)
    if pending.strip():
        commands.append(pending.strip())
    return commands


def _console_script(code: str) -> str:
    """A console block's commands: the lines after a `$ ` prompt (with their continuations)."""
    lines, continuing = [], False
    for raw in code.splitlines():
        if raw.startswith("$ "):
            lines.append(raw[2:])
            continuing = raw.rstrip().endswith("\\")
        elif continuing:
            lines.append(raw)
            continuing = raw.rstrip().endswith("\\")
    return "\n".join(lines) + "\n"


def _tail(text: str, limit: int = 3000) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


@dataclass
class DocSession:
    """One document's sandbox, port and background servers; run its blocks in order with run()."""

    doc: Path
    root: Path
    port: int = field(default_factory=_free_port)
    servers: List[Tuple[subprocess.Popen, Path]] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    done: List[str] = field(default_factory=list)  # names of the blocks already run (passed or failed)
    counter: int = 0

    def __post_init__(self) -> None:
        for sub in ("tmp", "data", "etc/gr00t", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # --- rewriting ------------------------------------------------------------------------------

    def rewrite(self, block: DocBlock, text: str) -> str:
        for old, new in block.replacements:
            if old not in text:
                raise DocsTestError(f"{block.name}: docs-test 'replace {old} => {new}' does not match the block any more")
            text = text.replace(old, new)
        text = re.sub(r"(?<![\w/.])/tmp/", f"{self.root}/tmp/", text)
        text = re.sub(r"(?<![\w/.])/data/", f"{self.root}/data/", text)
        text = re.sub(r"(?<![\w/.])/etc/gr00t\b", f"{self.root}/etc/gr00t", text)
        text = text.replace("gpu-box", "127.0.0.1").replace("0.0.0.0", "127.0.0.1")
        return re.sub(r"\b5555\b", str(self.port), text)

    @property
    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["HOME"] = str(self.root / "home")
        env.setdefault("MUJOCO_GL", "egl")
        env.setdefault("PYOPENGL_PLATFORM", env["MUJOCO_GL"])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # --- running --------------------------------------------------------------------------------

    def run_through(self, block: DocBlock) -> None:
        """Run the document's earlier blocks not run yet (a test selected alone still gets its servers and files),
        then `block`; DocsTestError naming the failing block."""
        for earlier in ordered_blocks(self.doc):
            if earlier.name == block.name:
                break
            if earlier.name not in self.done and not earlier.skip_reason:
                self.done.append(earlier.name)
                try:
                    self.run(earlier)
                except DocsTestError as exc:
                    self.failed.append(earlier.name)
                    raise DocsTestError(f"{block.name}: not run, because an earlier block failed:\n{exc}") from None
        self.done.append(block.name)
        try:
            self.run(block)
        except DocsTestError:
            self.failed.append(block.name)
            raise

    def run(self, block: DocBlock) -> None:
        """Run one block; DocsTestError (naming the block) when it fails."""
        for dataset in block.given_datasets:
            self._record_dataset(block, self.rewrite(block, dataset))
        if block.lang == "python":
            self._run_python(block)
        else:
            script = _console_script(block.code) if block.lang == "console" else block.code
            self._run_shell(block, self.rewrite(block, script))

    def _run_python(self, block: DocBlock) -> None:
        self.counter += 1
        script = self.root / f"block_{self.counter}_line_{block.line}.py"
        script.write_text(self.rewrite(block, block.code), encoding="utf-8")
        self._check(block, [sys.executable, str(script)], f"python {script.name}", block.timeout_s)

    def _run_shell(self, block: DocBlock, script: str) -> None:
        deadline = time.monotonic() + block.timeout_s
        pending: List[str] = []
        for command in map(self._with_port, _commands(script)):
            if re.match(r"^gr00t-server\s+serve\b", command):
                self._shell(block, pending, deadline)
                pending = []
                self._start_server(block, command, deadline)
            else:
                pending.append(command)
        self._shell(block, pending, deadline)

    def _with_port(self, command: str) -> str:
        """A gr00t-eval open-loop/rollout command that leaves the port to its default (5555) gets the document's."""
        for subcommand, flags in (("open-loop", ("--port",)), ("rollout", ("--policy-client-port", "--policy_client_port"))):
            pattern = rf"^(gr00t-eval\b[^|;&]*?\s){subcommand}\b"
            if re.match(pattern, command) and not any(flag in command for flag in flags):
                return re.sub(pattern, rf"\g<1>{subcommand} {flags[0]} {self.port}", command, count=1)
        return command

    def _shell(self, block: DocBlock, commands: List[str], deadline: float) -> None:
        if not any(not c.startswith("#") for c in commands):
            return
        script = "\n".join(commands) + "\n"
        self._check(block, ["bash", "-euo", "pipefail", "-c", script], script.strip(), max(1.0, deadline - time.monotonic()))

    def _check(self, block: DocBlock, argv: List[str], shown: str, timeout_s: float) -> None:
        try:
            done = subprocess.run(argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or "") + (exc.stderr or "") if isinstance(exc.stdout, str) else ""
            raise DocsTestError(f"{block.name}: did not finish within {timeout_s:.0f} s:\n{shown}\n--- output:\n{_tail(output)}") from None
        if done.returncode != 0:
            raise DocsTestError(
                f"{block.name}: exited with code {done.returncode}:\n{_tail(shown, 1500)}\n--- output:\n{_tail(done.stdout + done.stderr)}"
            )

    def _start_server(self, block: DocBlock, command: str, deadline: float) -> None:
        self.stop_servers()  # the document's serve commands are alternatives on one port
        argv = shlex.split(command)
        if not any(a in ("--port",) or a.startswith("--port=") for a in argv):
            argv += ["--port", str(self.port)]
        argv[0] = str(Path(sys.executable).parent / "gr00t-server")
        log = self.root / f"server_{len(self.servers)}_line_{block.line}.log"
        handle = log.open("w")
        process = subprocess.Popen(argv, cwd=self.root, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        handle.close()
        self.servers.append((process, log))
        while time.monotonic() < deadline:
            if SERVER_READY in log.read_text(errors="replace"):
                return
            if process.poll() is not None:
                raise DocsTestError(f"{block.name}: server exited with code {process.returncode}:\n{command}\n--- log:\n"
                                    f"{_tail(log.read_text(errors='replace'))}")
            time.sleep(0.2)
        raise DocsTestError(f"{block.name}: server not ready in time:\n{command}\n--- log:\n{_tail(log.read_text(errors='replace'))}")

    def _record_dataset(self, block: DocBlock, path: str) -> None:
        if Path(path, "meta", "info.json").is_file():
            return
        command = (f"gr00t-eval --log-level WARNING record --env-name metaworld/reach-v3 --episodes 2 "
                   f"--output {shlex.quote(path)} --seed 0 --image-size 32")
        self._check(block, ["bash", "-c", command], f"(given dataset) {command}", 120)

    def stop_servers(self) -> None:
        """Stop this document's servers (SIGTERM, then SIGKILL after 10 s)."""
        for process, _ in self.servers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        self.servers.clear()
