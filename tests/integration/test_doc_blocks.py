"""Every fenced code block in README.md, examples/*/README.md and docs/*.md works as written.

Each block is one test, named by its file and the line of its opening fence, and checked by
its language tag:

- ``python``: run as written, in a fresh interpreter, from the repository's folder. A block
  that uses ``LocalGrid`` brings its own grid. One that reads ``MADRPC_BROKER`` gets the
  frontend of a grid this module starts (an in-process ``LocalGrid`` on simple.js); one that
  reads ``MADRPC_BACKEND`` is a worker: it must register with a broker of its own and answer
  ``add``. No block may reach a default endpoint as written (tests never use them).
- ``js``: loaded in a real V8 ``Runtime``, where it must register functions; an excerpt that
  names its file (``// path (excerpt)``) may only register functions that file registers. A
  block with ES ``import``/``export`` is a Node.js program, not a MaDRPC script (those cannot
  import): ``node --check``.
- ``json``: parses (or, for a line-delimited stream, each line does).
- ``bash``, ``sh``, ``shell``, ``console``: every ``madrpc`` command line parses with the
  real CLI (no unknown option, every value of the right type, no missing or extra argument;
  paths are not looked at); ``MADRPC_*`` variables set are ones the CLI reads; ``python
  FILE.py`` names a file that exists and, if FILE uses argparse or click, takes the options
  given (by its ``--help``). Lines that need nothing running also run for real: ``madrpc
  run`` (an embedded grid), ``python examples/...`` in a block that starts no servers, and
  ``madrpc keygen`` (into a temporary directory, ``~`` and absolute paths mapped under it).
  A ``# prints VALUE`` comment (a JSON value) must match what the line printed.
- ``ini`` (systemd units, environment files): parses with configparser; ``MADRPC_*`` variables
  are ones the CLI reads (the ones the unit's ``ExecStart`` command reads, when it runs
  madrpc), and ``ExecStart`` parses with the CLI.
- no language, or ``text``: illustrations (diagrams, screens, wire exchanges), not checked.
  Any other language fails until it gets a check here or a skip marker.

``<!-- doc-test: skip (reason) -->`` on the line right before a block skips it.

Slow runs (interpreters, embedded grids) all start when the module does, so they overlap;
each test then waits for its own. Every process is killed (its whole session) at the end.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import itertools
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner
from grid_support import ROOT, SIMPLE_JS, Spawner, scaled, wait_for_workers

from madrpc import Client, LocalGrid
from madrpc.cli import main as madrpc_cli
from madrpc.cli_servers import broker_command, worker_command
from madrpc.errors import MadrpcError
from madrpc.runtime import Runtime

pytestmark = pytest.mark.timeout(scaled(180))

DOCS = [ROOT / "README.md", *sorted(ROOT.glob("examples/*/README.md")),
        *sorted(ROOT.glob("docs/*.md"))]
PYTHON, JS, JSON = {"python", "py"}, {"js", "javascript"}, {"json", "jsonl", "ndjson"}
SHELL, INI, ILLUSTRATION = {"bash", "sh", "shell", "console"}, {"ini", "systemd"}, {"", "text"}
CHECKED = PYTHON | JS | JSON | SHELL | INI

RUN_TIMEOUT_S = 120.0
"""How long one process may take (scaled): an embedded grid starts in a few seconds."""


# ------------------------------------------------------------------ finding the blocks

FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
MARKER = re.compile(r"<!--\s*doc-test:(?P<body>.*?)-->")
SKIP = re.compile(r"^\s*skip\s*\((?P<reason>[^)]*\S[^)]*)\)\s*$")


@dataclass(frozen=True)
class Block:
    path: str
    """The document, relative to the repository."""
    line: int
    """1-based line of the opening fence; the block's first line is ``line + 1``."""
    lang: str
    text: str
    marker: str | None
    """The ``doc-test:`` comment on the line before the fence, if any."""

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    def skip_reason(self) -> str | None:
        match = SKIP.match(self.marker) if self.marker is not None else None
        return match["reason"].strip() if match else None


def read_blocks(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])),
                   len(lines))
        body = [line[indent:] if not line[:indent].strip() else line.lstrip()
                for line in lines[i + 1:end]]
        marker = MARKER.search(lines[i - 1]) if i else None
        blocks.append(Block(str(doc.relative_to(ROOT)), i + 1,
                            (opening["info"].split() or [""])[0].lower(), "\n".join(body),
                            marker["body"].strip() if marker else None))
        i = end + 1
    return blocks


BLOCKS = [block for doc in DOCS for block in read_blocks(doc)]


def blocks_in(languages: set[str]) -> list[Any]:
    return [pytest.param(block, id=block.id) for block in BLOCKS if block.lang in languages]


def skip_if_marked(block: Block) -> None:
    reason = block.skip_reason()
    if reason is not None:
        pytest.skip(f"{block.id}: {reason}")


# ------------------------------------------------------------------ shell command lines

SEPARATORS = {"|", "||", "&&", ";", "&", ";;", "|&", "(", ")"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PYTHON_PROGRAM = re.compile(r"^python(3(\.\d+)?)?$")
CLI_PROGRAMS: dict[str, click.Command] = {
    "madrpc": madrpc_cli, "madrpc-broker": broker_command, "madrpc-worker": worker_command,
}


@dataclass(frozen=True)
class Command:
    """One simple command of a shell block, as the shell would split it."""

    block: Block
    line: int
    """Its line in the document."""
    text: str
    argv: tuple[str, ...]
    assignments: tuple[str, ...]
    comment: str

    @property
    def id(self) -> str:
        return f"{self.block.path}:{self.line}"

    @property
    def program(self) -> str:
        return Path(self.argv[0]).name


def split_comment(text: str) -> tuple[str, str]:
    """``text`` without its ``# comment`` (outside quotes), and the comment."""
    quote: str | None = None
    previous = " "
    for i, char in enumerate(text):
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and previous.isspace():
            return text[:i], text[i + 1:].strip()
        previous = char
    return text, ""


def logical_lines(block: Block) -> Iterator[tuple[int, str]]:
    """(document line, text) of each command line, ``\\`` continuations joined; in a
    ``console`` block only the ``$ `` lines are commands (the rest is their output)."""
    lines = block.text.split("\n")
    i = 0
    while i < len(lines):
        start, text = i, lines[i]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i]
        i += 1
        if block.lang == "console":
            if not text.lstrip().startswith("$ "):
                continue
            text = text.lstrip()[2:]
        yield block.line + 1 + start, text


def shell_commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    for line, text in logical_lines(block):
        code, comment = split_comment(text)
        lexer = shlex.shlex(code, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = ""
        words: list[str] = []
        pending_redirect = False
        for token in [*lexer, ";"]:
            if pending_redirect:
                pending_redirect = False
            elif token in SEPARATORS:
                assignments = tuple(itertools.takewhile(ASSIGNMENT.match, words))
                rest = words[len(assignments):]
                if rest or assignments:
                    commands.append(Command(block, line, text.strip(), tuple(rest),
                                            assignments, comment))
                words = []
            elif token[0] in "<>" or token in {"&>", ">&"}:
                pending_redirect = True
            else:
                words.append(token)
    return commands


def all_envvars(command: click.Command) -> set[str]:
    """Every environment variable ``command`` (and its subcommands) reads."""
    names: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        names.update([envvar] if isinstance(envvar, str) else envvar or [])
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            names |= all_envvars(sub)
    return names


KNOWN_ENVVARS = all_envvars(madrpc_cli) | all_envvars(broker_command) | all_envvars(
    worker_command)


def given(value: Any) -> bool:
    """Whether click's parser saw a value (click 8.2+ marks a missing one with a sentinel)."""
    return value is not None and type(value).__name__ != "Sentinel"


def check_cli(command: click.Command, args: list[str], name: str,
              parent: click.Context | None = None) -> None:
    """Parse ``args`` as ``command`` would, without running it and without looking at the
    files it names (they are on the reader's machine): raises click.UsageError for an
    unknown option or command, a bad value, a missing or an extra argument."""
    ctx = click.Context(command, info_name=name, parent=parent)
    values, rest, _ = command.make_parser(ctx).parse_args(args=list(args))
    if any(param.is_eager and not param.expose_value and given(values.get(param.name))
           for param in command.get_params(ctx)):
        return                                   # --help, --version: print and exit
    if isinstance(command, click.Group):
        if not rest:
            raise click.UsageError("no command given", ctx)
        sub_name, sub, sub_args = command.resolve_command(ctx, rest)
        assert sub is not None and sub_name is not None
        check_cli(sub, sub_args, sub_name, ctx)
        return
    if rest:
        raise click.UsageError(f"unexpected extra argument(s): {' '.join(rest)}", ctx)
    for param in command.get_params(ctx):
        value = values.get(param.name) if param.name else None
        if not given(value):
            if param.required and param.resolve_envvar_value(ctx) is None:
                raise click.MissingParameter(ctx=ctx, param=param)
            continue
        if not isinstance(param.type, click.Path | click.File):
            param.type_cast_value(ctx, value)


def check_cli_command(argv: tuple[str, ...], where: str) -> None:
    program = Path(argv[0]).name
    try:
        check_cli(CLI_PROGRAMS[program], list(argv[1:]), program)
    except click.ClickException as exc:
        pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse: {exc.format_message()}")


def check_envvar_names(names: list[str], allowed: set[str], where: str) -> None:
    unknown = sorted(n for n in names if n.startswith("MADRPC_") and n not in allowed)
    assert not unknown, (f"{where}: {unknown} {'is' if len(unknown) == 1 else 'are'} not read "
                         f"by the command (it reads {sorted(allowed)})")


def starts_servers(block: Block) -> bool:
    return any(
        (c.program == "madrpc" and c.argv[1:2] in (("broker",), ("worker",)))
        or c.program in ("madrpc-broker", "madrpc-worker")
        for c in shell_commands(block))


def runs_for_real(command: Command) -> bool:
    """Whether the line needs nothing running (so it is run, not only parsed)."""
    if command.program == "madrpc":
        return command.argv[1:2] == ("run",)
    return (PYTHON_PROGRAM.match(command.program) is not None and len(command.argv) == 2
            and command.argv[1].startswith("examples/") and command.argv[1].endswith(".py")
            and not starts_servers(command.block))


def unique_params(commands: list[Command]) -> list[Any]:
    seen: dict[str, int] = {}
    params = []
    for command in commands:
        seen[command.id] = seen.get(command.id, 0) + 1
        suffix = f"-{seen[command.id]}" if seen[command.id] > 1 else ""
        params.append(pytest.param(command, id=command.id + suffix))
    return params


SHELL_COMMANDS = [c for b in BLOCKS if b.lang in SHELL and b.skip_reason() is None
                  for c in shell_commands(b)]
RUNNABLE = [c for c in SHELL_COMMANDS if runs_for_real(c)]
KEYGENS = [c for c in SHELL_COMMANDS if c.program == "madrpc" and c.argv[1:2] == ("keygen",)]


# ------------------------------------------------------------------ processes


@dataclass(frozen=True)
class Job:
    """A process run to completion: a python block, or a command line as written."""

    name: str
    argv: tuple[str, ...] = ()
    source: str = ""
    """Python source to run, instead of ``argv``."""
    needs_grid: bool = False
    """Gets ``MADRPC_BROKER``: the frontend of the module's grid."""

    @property
    def key(self) -> tuple[tuple[str, ...], str]:
        return self.argv, self.source


@dataclass
class Finished:
    status: int | None
    """Exit status; None if it was killed at its timeout."""
    stdout: str
    stderr: str
    seconds: float

    def report(self) -> str:
        return (f"exit status {self.status} after {self.seconds:.1f} s\n"
                f"--- stdout (end) ---\n{self.stdout[-3000:]}\n"
                f"--- stderr (end) ---\n{self.stderr[-3000:]}")


class Process:
    """A process in a session of its own, output to files, always killed with its group."""

    def __init__(self, argv: list[str], env: dict[str, str], log_dir: Path, name: str) -> None:
        self.stdout_path, self.stderr_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        self.started = time.monotonic()
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.popen.pid

    def output(self) -> tuple[str, str]:
        return (self.stdout_path.read_text(errors="replace"),
                self.stderr_path.read_text(errors="replace"))

    def finish(self, timeout_s: float) -> Finished:
        try:
            status: int | None = self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            status = None
        return Finished(status, *self.output(), time.monotonic() - self.started)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(scaled(10))


def slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


class DocRunner:
    """Runs jobs (each once, however many tests want it), the module's grid, and brokers;
    :meth:`close` kills everything it started."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.spawner = Spawner(work)
        self.processes: list[Process] = []
        self._running: dict[tuple[tuple[str, ...], str], Process] = {}
        self._finished: dict[tuple[tuple[str, ...], str], Finished] = {}
        self._grid: LocalGrid | None = None

    def grid(self) -> LocalGrid:
        if self._grid is None:
            self._grid = LocalGrid(str(SIMPLE_JS), contexts=1)
        return self._grid

    def env(self, **extra: str) -> dict[str, str]:
        """This environment without the reader's MADRPC_ settings, plus ``extra``."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("MADRPC_") or k == "MADRPC_TEST_TIME_FACTOR"}
        return {**env, **extra}

    def spawn(self, job: Job, **env: str) -> Process:
        argv = list(job.argv)
        if job.source:
            script = self.work / f"{slug(job.name)}.py"
            script.write_text(job.source, encoding="utf-8")
            argv = [sys.executable, str(script)]
        if job.needs_grid:
            env["MADRPC_BROKER"] = self.grid().frontend
        process = Process(argv, self.env(**env), self.work, slug(job.name))
        self.processes.append(process)
        return process

    def start(self, job: Job) -> None:
        if job.key not in self._running:
            self._running[job.key] = self.spawn(job)

    def finish(self, job: Job) -> Finished:
        if job.key not in self._finished:
            self.start(job)
            self._finished[job.key] = self._running[job.key].finish(scaled(RUN_TIMEOUT_S))
        return self._finished[job.key]

    def close(self) -> None:
        try:
            for process in self.processes:
                process.kill()
            self.spawner.cleanup()
        finally:
            if self._grid is not None:
                self._grid.close()


def python_job(block: Block) -> Job:
    return Job(block.id, source=block.text + "\n", needs_grid="MADRPC_BROKER" in block.text)


def command_job(command: Command) -> Job:
    if command.program == "madrpc":
        argv = (sys.executable, "-m", "madrpc.cli", *command.argv[1:])
    else:
        argv = (sys.executable, *command.argv[1:])
    return Job(command.id, argv)


def help_job(command: Command) -> Job:
    return Job(f"{command.argv[1]} --help", (sys.executable, command.argv[1], "--help"))


def script_options(command: Command) -> list[str]:
    """The options a ``python FILE.py`` line gives, when FILE parses them with argparse or
    click (so ``--help`` only prints them; other scripts are not run to find out)."""
    script = ROOT / command.argv[1]
    if not script.is_file() or not re.search(r"\b(argparse|click)\b",
                                             script.read_text(encoding="utf-8")):
        return []
    return [a.split("=")[0] for a in command.argv[2:] if a.startswith("--")]


def jobs_of(item: pytest.Item) -> list[Job]:
    """The slow processes test ``item`` will wait for (started when the module starts)."""
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    name = getattr(item, "originalname", "")
    if name == "test_python_block_runs_as_written":
        block = params["block"]
        if block.skip_reason() is None and "MADRPC_BACKEND" not in block.text:
            return [python_job(block)]
    elif name == "test_self_contained_command_runs":
        return [command_job(params["command"])]
    elif name == "test_shell_block_commands_parse":
        return [help_job(c) for c in shell_commands(params["block"])
                if PYTHON_PROGRAM.match(c.program) and script_options(c)]
    elif name == "test_the_pi_examples_print_what_the_docs_say":
        return [command_job(c) for c in pi_commands().values()]
    return []


@pytest.fixture(scope="module", autouse=True)
def runner(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocRunner]:
    runner = DocRunner(tmp_path_factory.mktemp("doc-blocks"))
    try:
        this = sys.modules[__name__]
        jobs = [job for item in request.session.items if getattr(item, "module", None) is this
                for job in jobs_of(item)]
        for job in sorted(jobs, key=lambda job: job.needs_grid):   # the grid starts last
            runner.start(job)
        yield runner
    finally:
        runner.close()


# ------------------------------------------------------------------ the checks, by language


def test_every_block_has_a_check_or_a_reason_to_be_skipped() -> None:
    unchecked = [f"{b.id} ({b.lang})" for b in BLOCKS
                 if b.lang not in CHECKED | ILLUSTRATION and b.skip_reason() is None]
    assert not unchecked, (
        "no check for these blocks' language: add one to this module, or mark the block "
        f"with <!-- doc-test: skip (why) --> on the line before it: {unchecked}")


def test_every_doc_test_marker_is_a_skip_with_a_reason_right_before_a_block() -> None:
    markers = [(doc, n, m) for doc in DOCS
               for n, line in enumerate(doc.read_text(encoding="utf-8").split("\n"), 1)
               for m in MARKER.finditer(line)]
    before_blocks = {(ROOT / b.path, b.line - 1) for b in BLOCKS if b.marker is not None}
    wrong = [f"{doc.relative_to(ROOT)}:{n}: {m.group(0)}" for doc, n, m in markers
             if SKIP.match(m["body"]) is None or (doc, n) not in before_blocks]
    assert not wrong, ("a doc-test marker must read <!-- doc-test: skip (reason) --> on the "
                       f"line right before a fenced block: {wrong}")


DEFAULT_ENDPOINT = re.compile(r"tcp://(127\.0\.0\.1|localhost|\*|0\.0\.0\.0):555[56]\b")


def where_in_doc(block: Block, stderr: str, script: str) -> str:
    """Traceback lines of the block's file, with the document line they are."""
    def located(match: re.Match[str]) -> str:
        return f"{match.group(0)} (= {block.path}:{block.line + int(match['n'])})"

    return re.sub(rf'File "[^"]*{re.escape(script)}", line (?P<n>\d+)', located, stderr)


def check_worker_block(block: Block, runner: DocRunner) -> None:
    """A worker (it reads MADRPC_BACKEND): it registers with a broker of its own and
    answers add."""
    endpoints = runner.spawner.endpoints()
    runner.spawner.broker(endpoints, heartbeat_s=1.0)      # the block beats every second
    worker = runner.spawn(Job(block.id, source=block.text + "\n"),
                          MADRPC_BACKEND=endpoints.backend)
    try:
        snapshot = wait_for_workers(endpoints.frontend, 1, timeout_s=60)
        assert [w["pid"] for w in snapshot["workers"]] == [worker.pid]
        with Client(endpoints.frontend, timeout=scaled(10)) as client:
            assert client.call("add", [1, 2]) == 3
    except BaseException:
        stdout, stderr = worker.output()
        print(f"--- {block.id} stdout ---\n{stdout[-3000:]}\n--- stderr ---\n{stderr[-3000:]}")
        raise


@pytest.mark.parametrize("block", blocks_in(PYTHON))
def test_python_block_runs_as_written(block: Block, runner: DocRunner) -> None:
    skip_if_marked(block)
    compile(block.text, block.id, "exec")
    literals = [t.string for t in tokenize.generate_tokens(io.StringIO(block.text).readline)
                if t.type == tokenize.STRING and DEFAULT_ENDPOINT.search(t.string)]
    reads_env = "MADRPC_BROKER" in block.text or "MADRPC_BACKEND" in block.text
    assert not literals or reads_env, (
        f"{block.id} connects to {literals} as written, which needs a grid the reader started "
        "(and tests never use default endpoints): make it self-contained with LocalGrid, or "
        "read the endpoint from MADRPC_BROKER (MADRPC_BACKEND for a worker)")
    if "MADRPC_BACKEND" in block.text:
        check_worker_block(block, runner)
        return
    done = runner.finish(python_job(block))
    assert done.status == 0, (
        f"{block.id} failed: "
        + where_in_doc(block, done.report(), f"{slug(block.id)}.py"))


ES_MODULE = re.compile(r"^\s*(import\s.*\sfrom\s|import\s+['\"]|export\s)", re.M)
EXCERPT = re.compile(r"^//\s*(?P<path>\S+\.js)\s+\(excerpt\)")


def load_in_v8(source: str, name: str) -> list[str]:
    runtime = Runtime(source, name, lambda event: None)
    try:
        return list(runtime.methods)
    finally:
        runtime.close()


@pytest.mark.parametrize("block", blocks_in(JS))
def test_js_block_loads(block: Block, tmp_path: Path) -> None:
    skip_if_marked(block)
    if ES_MODULE.search(block.text):                       # a Node.js program
        if shutil.which("node") is None:
            pytest.skip(f"{block.id} is a Node.js module and node is not installed")
        module = tmp_path / "block.mjs"
        module.write_text(block.text + "\n", encoding="utf-8")
        check = subprocess.run(["node", "--check", str(module)], capture_output=True,
                               text=True, timeout=scaled(30), check=False)
        assert check.returncode == 0, f"{block.id} is not valid JavaScript:\n{check.stderr}"
        return
    try:
        methods = load_in_v8(block.text, f"/docs/{block.path}.js")
    except MadrpcError as exc:
        pytest.fail(f"{block.id} does not load in V8 (its line 1 is {block.path}:"
                    f"{block.line + 1}): {exc}")
    assert methods, f"{block.id} registers no function"
    excerpt = EXCERPT.match(block.text)
    if excerpt:
        path = ROOT / excerpt["path"]
        assert path.is_file(), f"{block.id} is an excerpt of {excerpt['path']}, which is missing"
        whole = load_in_v8(path.read_text(encoding="utf-8"), str(path))
        extra = sorted(set(methods) - set(whole))
        assert not extra, (f"{block.id} is an excerpt of {excerpt['path']} but registers "
                           f"{extra}, which that file does not")


@pytest.mark.parametrize("block", blocks_in(JSON))
def test_json_block_parses(block: Block) -> None:
    skip_if_marked(block)
    try:
        orjson.loads(block.text)
        return
    except orjson.JSONDecodeError as exc:
        whole = exc
    lines = [(n, line) for n, line in enumerate(block.text.split("\n"), block.line + 1)
             if line.strip()]
    for n, line in lines:
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            pytest.fail(f"{block.id} is not JSON ({whole}), nor one JSON value per line "
                        f"({block.path}:{n}: {exc})")
    assert len(lines) > 1, f"{block.id} is not JSON: {whole}"


@pytest.mark.parametrize("block", blocks_in(SHELL))
def test_shell_block_commands_parse(block: Block, runner: DocRunner) -> None:
    skip_if_marked(block)
    for command in shell_commands(block):
        check_envvar_names([a.split("=")[0] for a in command.assignments], KNOWN_ENVVARS,
                           command.id)
        if command.program == "export":
            check_envvar_names([a.split("=")[0] for a in command.argv[1:]], KNOWN_ENVVARS,
                               command.id)
        elif command.program in CLI_PROGRAMS:
            check_cli_command(command.argv, command.id)
        elif PYTHON_PROGRAM.match(command.program) and command.argv[1:2] != ("-m",):
            script = command.argv[1]
            assert (ROOT / script).is_file(), f"{command.id}: {script} does not exist"
            options = script_options(command)
            if options:
                done = runner.finish(help_job(command))
                assert done.status == 0, f"{script} --help failed: {done.report()}"
                missing = [o for o in options if not re.search(rf"{o}\b", done.stdout)]
                assert not missing, f"{command.id}: {script} has no option {missing}"


PRINTS = re.compile(r"\bprints (?P<value>\S+)$")


@pytest.mark.parametrize("command", unique_params(RUNNABLE))
def test_self_contained_command_runs(command: Command, runner: DocRunner) -> None:
    done = runner.finish(command_job(command))
    assert done.status == 0, f"{command.id}: `{command.text}` failed: {done.report()}"
    claim = PRINTS.search(command.comment)
    if claim:
        try:
            expected = orjson.loads(claim["value"])
        except orjson.JSONDecodeError:
            return
        assert orjson.loads(done.stdout) == expected, (
            f"{command.id}: `{command.text}` printed {done.stdout!r}, the docs say "
            f"{claim['value']}")


def under(root: Path, home: Path, word: str) -> str:
    """A path of the reader's machine, moved under ``root`` (``~`` to ``home``)."""
    if word == "~" or word.startswith("~/"):
        return str(home / word[2:])
    if word.startswith("/"):
        return str(root / word[1:])
    return word


@pytest.mark.parametrize("command", unique_params(KEYGENS))
def test_keygen_command_writes_the_key_pair(command: Command, tmp_path: Path) -> None:
    args = [under(tmp_path / "root", tmp_path / "home", a) for a in command.argv[1:]]
    if "--dir" not in args:
        args += ["--dir", str(tmp_path / "cwd")]       # where the reader's shell would be
    result = CliRunner().invoke(madrpc_cli, args)
    assert result.exit_code == 0, f"{command.id}: `{command.text}`: {result.output}"
    assert result.output.startswith("public key: "), result.output
    name, directory = args[1], Path(args[args.index("--dir") + 1])
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    assert public.stat().st_mode & 0o777 == 0o644, oct(public.stat().st_mode)
    assert secret.stat().st_mode & 0o777 == 0o600, oct(secret.stat().st_mode)


SYSTEMD_PREFIXES = "-@+!:"


@pytest.mark.parametrize("block", blocks_in(INI))
def test_ini_block_parses(block: Block) -> None:
    skip_if_marked(block)
    text = block.text
    has_sections = re.match(r"(\s*([#;].*)?\n)*\s*\[", text) is not None
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text if has_sections else "[environment file]\n" + text,
                           source=block.id)
    except configparser.Error as exc:
        pytest.fail(f"{block.id} does not parse: {exc}")
    allowed = KNOWN_ENVVARS
    exec_start = parser.get("Service", "ExecStart", fallback=None)
    if exec_start:
        argv = shlex.split(exec_start.lstrip(SYSTEMD_PREFIXES))
        command = CLI_PROGRAMS.get(Path(argv[0]).name)
        if command is not None:
            check_cli_command(tuple(argv), f"{block.id} ExecStart")
            allowed = all_envvars(command)
    names = [] if has_sections else list(parser["environment file"])
    for line in text.split("\n"):
        setting = re.match(r"\s*Environment\s*=\s*(?P<value>.*)$", line)
        if setting:
            names += [word.split("=")[0] for word in shlex.split(setting["value"])]
    check_envvar_names(names, allowed, block.id)


# ------------------------------------------------------------------ what the docs say they print


def pi_commands() -> dict[str, Command]:
    """The pi command lines: the README's quick start, and both of monte-carlo-pi's."""
    quick_start = next(c for c in RUNNABLE if c.block.path == "README.md"
                       and "pi.js" in c.text)
    example = [c for c in RUNNABLE if c.block.path == "examples/monte-carlo-pi/README.md"]
    return {"quick start": quick_start,
            "run": next(c for c in example if c.program == "madrpc"),
            "estimate_pi": next(c for c in example if c.program != "madrpc")}


def test_the_pi_examples_print_what_the_docs_say(runner: DocRunner) -> None:
    commands = pi_commands()
    done = {name: runner.finish(command_job(c)) for name, c in commands.items()}
    for name, finished in done.items():
        assert finished.status == 0, f"{name}: {commands[name].text}: {finished.report()}"

    quick = commands["quick start"].block
    shown = next(b for b in BLOCKS if b.path == quick.path and b.line > quick.line
                 and b.lang in JSON)
    assert orjson.loads(done["quick start"].stdout) == orjson.loads(shown.text), (
        f"{shown.id} shows what `{commands['quick start'].text}` prints, but it printed "
        f"{done['quick start'].stdout}")

    prose = (ROOT / "examples/monte-carlo-pi/README.md").read_text(encoding="utf-8")
    claim = re.search(r"Both print an estimate within (?P<within>[\d.]+) of pi.*?samples: "
                      r"(?P<value>\d\.\d+)\)", prose, re.S)
    assert claim, "examples/monte-carlo-pi/README.md no longer says what both commands print"
    assert orjson.loads(done["run"].stdout)["piEstimate"] == float(claim["value"])
    estimate = re.search(r"pi ~ (?P<pi>\d\.\d+)", done["estimate_pi"].stdout)
    assert estimate, done["estimate_pi"].report()
    assert abs(float(estimate["pi"]) - math.pi) < float(claim["within"])
    assert round(float(claim["value"]), 6) == float(estimate["pi"])
