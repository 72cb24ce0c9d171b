"""Hosts made of Linux network namespaces, for tests of a grid spread over several hosts.

Each host is a network namespace with one veth link to a Linux bridge that lives in a
namespace of its own (the "switch"), so nothing touches the root namespace's interfaces
and every interface name is private to a namespace created for the test. Addresses are
only in 198.18.0.0/24 (the benchmarking range, RFC 2544): no default route, no IPv6,
nothing reaches outside the switch.

A fault is a link taken down at the switch (``ip link set PORT down`` in the switch's
namespace), as a pulled cable would be: the host keeps its address and its sockets, its
packets go nowhere and nothing tells either side, so only heartbeats and retries can
notice. (The kernel here has no netem qdisc, so delay and loss are out of reach.)

Names carry ``mdrnet-<pytest pid>-<counter>``, so parallel runs never collide, and a
namespace left behind by a run whose pytest process is gone is removed before a new
network is made. Processes run in a host with ``ip netns exec`` (which execs, so the
process we start is the program itself), in their own session; teardown kills each
process group by PID, then anything still inside the namespaces, then the namespaces.

Every fixed duration goes through :func:`grid_support.scaled`, and every wait polls a
condition, as in :mod:`grid_support`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from grid_support import HEARTBEAT_S, LIVENESS, SCRIPTS, Proc, scaled, wait_until

SKIP_REASON = "needs root and ip netns: network namespaces stand in for hosts"
NAME_PREFIX = "mdrnet"
"""Every namespace the harness makes is called ``mdrnet-<pid>-<counter>-<host>``."""
SUBNET = "198.18.0."
PREFIX_LENGTH = 24
BROKER_HOST = "broker"
CLIENT_HOST = "client"
WORKER_HOSTS = ("w1", "w2")
HOST_OCTETS = {BROKER_HOST: 1, "w1": 2, "w2": 3, CLIENT_HOST: 4}
FRONTEND_PORT = 5555
BACKEND_PORT = 5556
MULTIHOST_JS = SCRIPTS / "multihost.js"
MAX_IFNAME = 15
"""Linux's limit on interface names (IFNAMSIZ - 1)."""
IP_TIMEOUT_S = 20.0
EXEC_LINE = re.compile(r"\bEXEC (\S+) (\S+)")
"""The line multihost.js logs per completed execution: its key and the execution's name."""
LIVENESS_WINDOW_S = HEARTBEAT_S * LIVENESS
"""How long a silent peer takes to be declared dead (already scaled)."""

_networks = itertools.count(1)


# ------------------------------------------------------------------ ip(8)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; with ``check``, fail the test with ip's own message on an error."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True,
                          timeout=scaled(IP_TIMEOUT_S), stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): "
                           f"{done.stderr.strip()}")
    return done


def namespaces() -> list[str]:
    """The names ``ip netns list`` shows (it may append ``(id: N)``)."""
    listing = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def _pids_in(netns: str) -> list[int]:
    listing = ip("netns", "pids", netns, check=False).stdout
    return [int(word) for word in listing.split() if word.isdigit()]


def delete_namespace(netns: str) -> None:
    """Kill whatever still runs inside ``netns`` (only test processes can: the namespace
    is ours), then delete it, which deletes its interfaces and their veth peers."""
    for pid in _pids_in(netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if netns in namespaces():
        ip("netns", "del", netns, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_namespaces() -> list[str]:
    """Delete the namespaces of earlier runs whose pytest process is gone (a run killed
    before its teardown); those of live runs, parallel ones included, are left alone."""
    pattern = re.compile(rf"^{NAME_PREFIX}-(\d+)-")
    stale = [name for name in namespaces()
             if (match := pattern.match(name)) and not _pid_alive(int(match.group(1)))]
    for name in stale:
        delete_namespace(name)
    return stale


def scratch_dir(kind: str) -> Path:
    """A private temporary directory named after this run, so that
    :func:`reap_stale_dirs` can tell one left by a killed run."""
    return Path(tempfile.mkdtemp(prefix=f"{NAME_PREFIX}-{os.getpid()}-{kind}-"))


def reap_stale_dirs() -> list[Path]:
    """Remove the scratch directories (keys, programs) of runs whose pytest is gone."""
    pattern = re.compile(rf"^{NAME_PREFIX}-(\d+)-")
    stale = [path for path in Path(tempfile.gettempdir()).glob(f"{NAME_PREFIX}-*")
             if (match := pattern.match(path.name)) and not _pid_alive(int(match.group(1)))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


@functools.cache
def netns_unavailable() -> str | None:
    """Why namespaces cannot stand in for hosts here, or None when they can. Tried for
    real (a namespace, a bridge and a veth pair), because root alone is not enough in
    some containers."""
    if os.geteuid() != 0:
        return "not running as root"
    if shutil.which("ip") is None:
        return "no ip(8) command"
    probe = f"{NAME_PREFIX}-{os.getpid()}-probe"
    try:
        delete_namespace(probe)
        ip("netns", "add", probe)
        ip("-n", probe, "link", "add", "br0", "type", "bridge")
        ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ip("-n", probe, "link", "set", "v0", "master", "br0")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    finally:
        with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
            delete_namespace(probe)
    return None


def require_netns() -> None:
    """Skip the calling test (or module fixture) when namespaces are not to be had."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"{SKIP_REASON} ({reason})")


# ------------------------------------------------------------------ network


@dataclass(frozen=True)
class Host:
    """One host: a namespace whose ``eth0`` is wired to the switch's ``port``."""

    name: str
    netns: str
    address: str
    port: str


class Network:
    """A switch (a bridge in its own namespace) and hosts wired to it, all removed by
    :meth:`cleanup` whatever happened."""

    def __init__(self) -> None:
        self.tag = f"{NAME_PREFIX}-{os.getpid()}-{next(_networks)}"
        self.switch = f"{self.tag}-switch"
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []

    def create(self, octets: dict[str, int]) -> None:
        """The switch, then one host per ``name: last octet of its address``."""
        reap_stale_namespaces()
        self._add_namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for name, octet in octets.items():
            self.add_host(name, octet)

    def _add_namespace(self, netns: str) -> None:
        """A new namespace with loopback up and IPv6 off (a same-named leftover, which a
        reused PID could leave, is deleted first)."""
        delete_namespace(netns)
        ip("netns", "add", netns)
        self._made.append(netns)
        ip("-n", netns, "link", "set", "lo", "up")
        subprocess.run(
            ["ip", "netns", "exec", netns, "sysctl", "-q", "-w",
             "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
            capture_output=True, timeout=scaled(IP_TIMEOUT_S), check=False,
            stdin=subprocess.DEVNULL)

    def add_host(self, name: str, octet: int) -> Host:
        host = Host(name, f"{self.tag}-{name}", f"{SUBNET}{octet}", f"to-{name}")
        if len(host.port) > MAX_IFNAME:
            raise ValueError(f"interface name {host.port!r} is longer than {MAX_IFNAME}")
        self._add_namespace(host.netns)
        ip("-n", self.switch, "link", "add", host.port, "type", "veth",
           "peer", "name", "eth0", "netns", host.netns)
        ip("-n", self.switch, "link", "set", host.port, "master", "br0")
        ip("-n", self.switch, "link", "set", host.port, "up")
        ip("-n", host.netns, "addr", "add", f"{host.address}/{PREFIX_LENGTH}", "dev", "eth0")
        ip("-n", host.netns, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def link_down(self, host: str) -> None:
        """Cut ``host`` off: its switch port goes down (its own eth0 loses carrier)."""
        ip("-n", self.switch, "link", "set", self.hosts[host].port, "down")

    def link_up(self, host: str) -> None:
        ip("-n", self.switch, "link", "set", self.hosts[host].port, "up")

    @contextlib.contextmanager
    def partitioned(self, host: str) -> Iterator[None]:
        """``host``'s link is down inside the block, and up again after it, also when the
        block fails."""
        self.link_down(host)
        try:
            yield
        finally:
            self.link_up(host)

    def cleanup(self) -> None:
        """Delete every namespace made (hosts first, the switch last)."""
        for netns in reversed(self._made):
            with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
                delete_namespace(netns)
        self._made.clear()

    def leftovers(self) -> list[str]:
        """Namespaces of this network that still exist (none after :meth:`cleanup`)."""
        return [name for name in namespaces() if name.startswith(f"{self.tag}-")]


# ------------------------------------------------------------------ processes


class HostSpawner:
    """Starts processes inside hosts (``ip netns exec``), each in its own session, and
    kills every process group at :meth:`cleanup` (as :class:`grid_support.Spawner`)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self._count = 0

    def run(self, host: Host, argv: list[str], name: str) -> Proc:
        self._count += 1
        proc = Proc(["ip", "netns", "exec", host.netns, *argv], self.log_dir,
                    f"{self._count:02d}-{host.name}-{name}")
        self.procs.append(proc)
        return proc

    def madrpc(self, host: Host, *args: str, name: str) -> Proc:
        return self.run(host, [sys.executable, "-m", "madrpc.cli", *args], name)

    def python(self, host: Host, program: Path, *args: str, name: str) -> Proc:
        return self.run(host, [sys.executable, str(program), *args], name)

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.kill_group()


# ------------------------------------------------------------------ keys


@dataclass(frozen=True)
class Keys:
    """CURVE keys made by ``madrpc keygen`` as each party would: every party's pair in its
    own directory, the public keys copied into the broker's role directories."""

    root: Path
    parties: tuple[str, ...]

    def secret(self, party: str) -> Path:
        return self.root / party / f"{party}.key_secret"

    def public(self, party: str) -> Path:
        return self.root / party / f"{party}.key"

    @property
    def worker_dir(self) -> Path:
        return self.root / BROKER_HOST / "workers"

    @property
    def client_dir(self) -> Path:
        return self.root / BROKER_HOST / "clients"


def make_keys(root: Path, workers: tuple[str, ...], clients: tuple[str, ...]) -> Keys:
    """Run ``python -m madrpc.cli keygen`` for the broker, each worker and each client (at
    once: each is a Python start-up), then hand the public keys to the broker."""
    parties = (BROKER_HOST, *workers, *clients)
    jobs = [subprocess.Popen([sys.executable, "-m", "madrpc.cli", "keygen", party,
                              "--dir", str(root / party)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
            for party in parties]
    for party, job in zip(parties, jobs, strict=True):
        _, err = job.communicate(timeout=scaled(60))
        if job.returncode != 0:
            raise RuntimeError(f"madrpc keygen {party} failed: {err.decode(errors='replace')}")
    keys = Keys(root, parties)
    for role_dir, members in ((keys.worker_dir, workers), (keys.client_dir, clients)):
        role_dir.mkdir(parents=True, exist_ok=True)
        for party in members:
            shutil.copy(keys.public(party), role_dir / keys.public(party).name)
    return keys


# ------------------------------------------------------------------ programs

MONITOR_PROGRAM = '''\
"""Polls a broker's _metrics for a multi-host test (run on the broker's host, so it sees
the broker through every partition) and keeps the latest snapshot in a file: the test
reads the file instead of reaching into the namespaces itself. Also keeps, per worker
registration, the most requests it was seen to have completed, so work done by a
registration that later died still counts."""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from madrpc import Client, ClientConfig
from madrpc.errors import MadrpcError


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    out = Path(config["out"])
    partial = out.with_name(out.name + ".partial")
    stop = Path(config["stop_file"])
    deadline = time.monotonic() + config["max_seconds"]
    served = {}
    seq = 0
    client_config = ClientConfig(endpoint=config["endpoint"], timeout_s=config["timeout_s"],
                                 curve_secret=config["curve_secret"],
                                 server_key=config["server_key"])
    with Client(config=client_config) as client:
        while not stop.exists() and time.monotonic() < deadline:
            asked = time.monotonic()
            try:
                metrics = client.call("_metrics", idempotency_key=None)
            except MadrpcError as exc:
                print(f"_metrics failed: {exc!r}", file=sys.stderr, flush=True)
                continue
            took = time.monotonic() - asked
            if took > config["slow_s"]:
                print(f"_metrics took {took:.3f} s", file=sys.stderr, flush=True)
            for worker in metrics.get("workers", []):
                seen = served.setdefault(worker["identity"],
                                         {"pid": worker["pid"], "requests": 0})
                seen["requests"] = max(seen["requests"], worker["requests"])
            seq += 1
            partial.write_text(json.dumps({"seq": seq, "at": time.monotonic(),
                                           "metrics": metrics, "served": served}))
            os.replace(partial, out)
            time.sleep(config["interval_s"])


main()
'''

CLIENT_PROGRAM = '''\
"""Load for a multi-host test, run on the client's host: calls to mh_echo, each with its
own idempotency key, at most `window` in flight, until the stop file appears (or a bound
on calls or time is reached); then waits for every answer and prints one JSON document.

Besides the answer each call got, it records every answer that reached its socket: the
client hands a call one result and drops any later answer for it, so an answer from a
second execution is only visible there."""
import json
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

from madrpc import Client, ClientConfig


def tap(client, wire):
    book = client._book
    on_frame = book.on_frame

    def tapped(frame, now):
        try:
            document = json.loads(frame)
        except ValueError:
            document = None
        for response in document if isinstance(document, list) else [document]:
            result = response.get("result") if isinstance(response, dict) else None
            if isinstance(result, dict) and "key" in result and "execution" in result:
                wire.setdefault(str(result["key"]), []).append(result["execution"])
        return on_frame(frame, now)

    book.on_frame = tapped


def outcome(future, value):
    try:
        return {"value": value, "result": future.result()}
    except Exception as exc:
        return {"value": value, "error": repr(exc), "code": getattr(exc, "code", None)}


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    stop = Path(config["stop_file"])
    deadline = time.monotonic() + config["max_seconds"]
    client = Client(config=ClientConfig(
        endpoint=config["endpoint"], timeout_s=config["timeout_s"],
        retry_interval_s=config["retry_interval_s"],
        probe_interval_s=config["probe_interval_s"],
        curve_secret=config["curve_secret"], server_key=config["server_key"]))
    wire = {}
    tap(client, wire)
    pending, results, sent, said = {}, {}, 0, 0.0
    while True:
        while (len(pending) < config["window"] and sent < config["max_calls"]
               and not stop.exists() and time.monotonic() < deadline):
            key = f"{config['prefix']}-{sent}"
            value = sent * 7 + 3
            params = {"key": key, "value": value, "cpuMs": config["cpu_ms"],
                      "waitMs": config["wait_ms"]}
            pending[client.submit("mh_echo", params, idempotency_key=key)] = (key, value)
            sent += 1
        if not pending:
            break
        done, _ = wait(list(pending), timeout=0.05, return_when=FIRST_COMPLETED)
        for future in done:
            key, value = pending.pop(future)
            results[key] = outcome(future, value)
        if time.monotonic() - said >= 0.05:
            said = time.monotonic()
            print(f"PROGRESS {sent} {len(results)}", file=sys.stderr, flush=True)
    stats = client.stats()
    report = {"sent": sent, "results": results, "wire": wire, "retries": stats.retries,
              "reconnects": stats.reconnects}
    client.close()
    print(f"PROGRESS {sent} {len(results)}", file=sys.stderr, flush=True)
    print(json.dumps(report), flush=True)


main()
'''


# ------------------------------------------------------------------ the load


@dataclass
class LoadReport:
    """What the load client printed when it stopped."""

    sent: int
    results: dict[str, dict[str, Any]]
    wire: dict[str, list[str]]
    retries: int
    reconnects: int

    def problems(self) -> list[str]:
        """Every way the calls were not answered correctly exactly once: missing, failed,
        wrong, or answered on the wire by more than one execution."""
        found = []
        if len(self.results) != self.sent:
            found.append(f"{self.sent} calls sent, {len(self.results)} answered")
        for key, entry in sorted(self.results.items()):
            result = entry.get("result")
            if "error" in entry:
                found.append(f"{key}: failed with {entry['error']}")
            elif (not isinstance(result, dict) or result.get("key") != key
                  or result.get("value") != entry["value"]):
                found.append(f"{key}: wrong answer {result!r} (value {entry['value']})")
            elif set(self.wire.get(key, [])) != {result["execution"]}:
                found.append(f"{key}: answered by {self.wire.get(key)}, "
                             f"kept {result['execution']}")
        found += [f"{key}: answered on the wire, never called"
                  for key in sorted(set(self.wire) - set(self.results))]
        return found

    def answering_executions(self) -> set[str]:
        """The executions whose answers the calls kept."""
        return {entry["result"]["execution"] for entry in self.results.values()
                if isinstance(entry.get("result"), dict) and "execution" in entry["result"]}

    def repeat_problems(self, executions: dict[str, list[str]], second_runs: int) -> list[str]:
        """Runs beyond one per key that the broker's own accounting cannot explain.

        An answer lost with its connection cannot show on the client's socket, so the
        workers' logs are the count. A keyed call may start again only when the broker
        dispatches it again after losing its worker (``requeued`` in ``_metrics``), or when
        it answered "worker lost" (-32005, after its last attempt) and the client retried:
        ``second_runs`` is the sum of both. A client's resend otherwise joins the run or
        gets its stored reply."""
        extra = {key: runs for key, runs in executions.items()
                 if key in self.results and len(runs) > 1}
        surplus = sum(len(runs) - 1 for runs in extra.values())
        if surplus <= second_runs:
            return []
        return [f"{surplus} extra runs of {len(extra)} keys, but only {second_runs} "
                f"re-dispatches and retries after -32005: " + ", ".join(
                    f"{key} x{len(runs)}" for key, runs in sorted(extra.items())[:20])]


class Load:
    """A running load client (see ``CLIENT_PROGRAM``)."""

    def __init__(self, proc: Proc, stop_file: Path) -> None:
        self.proc = proc
        self.stop_file = stop_file

    def progress(self) -> tuple[int, int]:
        """(calls sent, calls answered) as the client last said."""
        lines = [line for line in self.proc.stderr().splitlines()
                 if line.startswith("PROGRESS ")]
        if not lines:
            return 0, 0
        _, sent, answered = lines[-1].split()
        return int(sent), int(answered)

    def answered(self) -> int:
        return self.progress()[1]

    def wait_answered(self, count: int, timeout_s: float = 30.0) -> int:
        """Wait until ``count`` calls were answered (the client must still be running)."""
        def enough() -> int | None:
            if not self.proc.alive():
                pytest.fail(f"the load client exited early:\n{self.proc.stderr()[-3000:]}")
            answered = self.answered()
            return answered if answered >= count else None

        found: int = wait_until(enough, timeout_s, 0.05, f"{count} answered calls")
        return found

    def stop(self, timeout_s: float = 60.0) -> LoadReport:
        """Ask the client to stop calling, wait for its answers, and return its report."""
        self.stop_file.touch()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the load client did not finish in {scaled(timeout_s):g} s "
                        f"(progress {self.progress()})")
        lines = self.proc.stdout().strip().splitlines()
        if self.proc.popen.returncode != 0 or not lines:
            pytest.fail(f"the load client failed ({self.proc.popen.returncode}):\n"
                        f"{self.proc.stderr()[-3000:]}")
        document = json.loads(lines[-1])
        return LoadReport(document["sent"], document["results"], document["wire"],
                          document["retries"], document["reconnects"])


# ------------------------------------------------------------------ the grid


@dataclass
class Snapshot:
    """One of the monitor's readings of the broker's ``_metrics``."""

    seq: int
    at: float
    metrics: dict[str, Any]
    served: dict[str, dict[str, Any]]


@dataclass
class MultiHostGrid:
    """A broker host, worker hosts and a client host on one switch, all over CURVE/TCP.

    The broker's host also runs a monitor (see ``MONITOR_PROGRAM``) that the test reads
    through a file, so the test never needs a route into the namespaces."""

    log_dir: Path
    run_dir: Path
    keys: Keys
    network: Network = field(default_factory=Network)
    workers: dict[str, Proc] = field(default_factory=dict)
    broker: Proc | None = None
    monitor: Proc | None = None
    _loads: int = 0

    def __post_init__(self) -> None:
        self.spawner = HostSpawner(self.log_dir)
        self.snapshot_file = self.run_dir / "metrics.json"
        self.stop_monitor = self.run_dir / "monitor.stop"

    @property
    def frontend(self) -> str:
        return f"tcp://{SUBNET}{HOST_OCTETS[BROKER_HOST]}:{FRONTEND_PORT}"

    @property
    def backend(self) -> str:
        return f"tcp://{SUBNET}{HOST_OCTETS[BROKER_HOST]}:{BACKEND_PORT}"

    def start(self) -> None:
        """The network, the broker, its monitor and the workers; returns once every
        worker is registered."""
        self.network.create(HOST_OCTETS)
        self.broker = self._start_broker()
        self.monitor = self._start_monitor()
        for name in WORKER_HOSTS:
            self.workers[name] = self._start_worker(name)
        self.wait_for(lambda s: all(self.entry(s, name) for name in WORKER_HOSTS),
                      "every worker host registered", timeout_s=60)

    def _start_broker(self) -> Proc:
        keys = self.keys
        return self.spawner.madrpc(
            self.network.hosts[BROKER_HOST], "broker", "--frontend", self.frontend,
            "--backend", self.backend, "--curve-secret", str(keys.secret(BROKER_HOST)),
            "--worker-keys", str(keys.worker_dir), "--client-keys", str(keys.client_dir),
            "--heartbeat-interval", str(HEARTBEAT_S), "--heartbeat-liveness", str(LIVENESS),
            "--log-level", "debug", name="broker")

    def _start_worker(self, name: str) -> Proc:
        """A worker of one context; its reconnect back-off is capped at a second (scaled)
        so a rejoin after a partition takes seconds, not the default's up to 8."""
        keys = self.keys
        return self.spawner.madrpc(
            self.network.hosts[name], "worker", "--script", str(MULTIHOST_JS),
            "--broker", self.backend, "--curve-secret", str(keys.secret(name)),
            "--server-key", str(keys.public(BROKER_HOST)), "--contexts", "1",
            "--heartbeat-interval", str(HEARTBEAT_S), "--heartbeat-liveness", str(LIVENESS),
            "--reconnect-max", str(scaled(1.0)), "--log-level", "debug", name="worker")

    def _program(self, name: str, source: str, config: dict[str, Any]) -> tuple[Path, Path]:
        """Write a program and its configuration into the run directory."""
        program = self.run_dir / f"{name}.py"
        program.write_text(source)
        config_file = self.run_dir / f"{name}.json"
        config_file.write_text(json.dumps(config))
        return program, config_file

    def _curve(self, party: str) -> dict[str, str]:
        return {"curve_secret": str(self.keys.secret(party)),
                "server_key": str(self.keys.public(BROKER_HOST))}

    def _start_monitor(self) -> Proc:
        program, config = self._program("monitor", MONITOR_PROGRAM, {
            "endpoint": self.frontend, "out": str(self.snapshot_file),
            "stop_file": str(self.stop_monitor), "timeout_s": scaled(2.0),
            "interval_s": scaled(0.05), "slow_s": scaled(0.25), "max_seconds": scaled(300),
            **self._curve("monitor"),
        })
        return self.spawner.python(self.network.hosts[BROKER_HOST], program, str(config),
                                   name="monitor")

    def start_load(self, *, window: int = 6, cpu_ms: int = 15, wait_ms: int = 100,
                   retry_interval_s: float = 1.0, probe_interval_s: float = 0.25,
                   timeout_s: float = 40.0) -> Load:
        """Start the load client on the client host. Its probe and retry intervals are
        shorter than the client's defaults (1 s and 5 s), scaled: a partition of a few
        seconds then makes it give its connection up and resend, which is what the tests
        exercise."""
        self._loads += 1
        name = f"load{self._loads}"
        stop_file = self.run_dir / f"{name}.stop"
        program, config = self._program(name, CLIENT_PROGRAM, {
            "endpoint": self.frontend, "stop_file": str(stop_file),
            "prefix": f"{self.network.tag}-{name}", "window": window, "cpu_ms": cpu_ms,
            "wait_ms": round(scaled(wait_ms)), "timeout_s": scaled(timeout_s),
            "retry_interval_s": scaled(retry_interval_s),
            "probe_interval_s": scaled(probe_interval_s), "max_calls": 20_000,
            "max_seconds": scaled(90), **self._curve(CLIENT_HOST),
        })
        proc = self.spawner.python(self.network.hosts[CLIENT_HOST], program, str(config),
                                   name=name)
        return Load(proc, stop_file)

    # -------------------------------------------------------------- reading the broker

    def snapshot(self) -> Snapshot | None:
        """The monitor's latest reading (None before the first)."""
        try:
            document = json.loads(self.snapshot_file.read_text())
        except (OSError, ValueError):
            return None
        return Snapshot(document["seq"], document["at"], document["metrics"],
                        document["served"])

    def wait_for(self, condition: Callable[[Snapshot], Any], message: str,
                 timeout_s: float = 30.0, after: float | None = None) -> Snapshot:
        """Wait for a reading (taken after ``after``, a ``time.monotonic()``, if given) that
        satisfies ``condition``; fail if the broker or the monitor died meanwhile."""
        def satisfied() -> Snapshot | None:
            self.check_alive()
            snapshot = self.snapshot()
            if snapshot is None or (after is not None and snapshot.at < after):
                return None
            return snapshot if condition(snapshot) else None

        found: Snapshot = wait_until(satisfied, timeout_s, 0.05, message)
        return found

    def fresh_snapshot(self) -> Snapshot:
        """A reading taken after this call (the file may be a poll interval old)."""
        return self.wait_for(lambda s: True, "a fresh reading of _metrics",
                             after=time.monotonic())

    def check_alive(self) -> None:
        """Fail at once if the broker, the monitor or a worker exited: none should, and
        waiting for it to answer would only time out."""
        for proc in (self.broker, self.monitor, *self.workers.values()):
            if proc is not None and not proc.alive():
                pytest.fail(f"{proc.name} exited ({proc.popen.returncode}):\n"
                            f"{proc.stderr()[-3000:]}")

    def entry(self, snapshot: Snapshot, host: str) -> dict[str, Any] | None:
        """``host``'s worker in a reading, by its PID: worker ids are ``host:pid`` and
        every namespace shares the machine's host name."""
        pid = self.workers[host].pid
        entries = [w for w in snapshot.metrics["workers"] if w["pid"] == pid]
        return entries[0] if entries else None

    def served_by_host(self) -> dict[str, int]:
        """Requests each worker host completed, summed over its registrations, from the
        broker's ``_metrics`` as the monitor saw them."""
        snapshot = self.fresh_snapshot()
        by_pid = {proc.pid: host for host, proc in self.workers.items()}
        served: Counter[str] = Counter({host: 0 for host in self.workers})
        for seen in snapshot.served.values():
            if seen["pid"] in by_pid:
                served[by_pid[seen["pid"]]] += seen["requests"]
        return dict(served)

    def executions(self) -> dict[str, list[str]]:
        """Every execution the workers' JavaScript logged, by idempotency key."""
        found: dict[str, list[str]] = {}
        for proc in self.workers.values():
            for key, execution in EXEC_LINE.findall(proc.stderr()):
                found.setdefault(key, []).append(execution)
        return found

    def wait_for_executions(self, answered: set[str]) -> dict[str, list[str]]:
        """The logged executions, once every execution in ``answered`` is among them (a
        log line may trail its answer by a moment)."""
        def logged() -> dict[str, list[str]] | None:
            executions = self.executions()
            seen = {run for runs in executions.values() for run in runs}
            return executions if answered <= seen else None

        found: dict[str, list[str]] = wait_until(logged, 10.0, 0.05,
                                                 "the answering executions in the logs")
        return found

    def executions_by_host(self) -> dict[str, int]:
        """Executions each worker host's JavaScript logged (``EXEC`` lines): counts runs
        whose answers were lost in a partition too."""
        return {host: len(EXEC_LINE.findall(proc.stderr()))
                for host, proc in self.workers.items()}

    def wait_for_heartbeat_loss(self, identity: str, timeout_s: float = 15.0) -> None:
        """Wait until the broker has logged that the registration ``identity`` (hex, as in
        ``_metrics``) left for lost heartbeats. The log is the evidence, not a reading of
        ``_metrics`` during the fault: on a loaded machine a reading can take a second,
        and a short fault can pass between two of them."""
        assert self.broker is not None
        self.broker.wait_for_log(f"worker {identity} left (heartbeat lost)", timeout_s)

    # -------------------------------------------------------------- teardown

    def cleanup(self) -> None:
        """Kill every process group, then delete the namespaces; each step runs even
        when the one before it failed."""
        try:
            self.spawner.cleanup()
        finally:
            self.network.cleanup()

    def leftovers(self) -> list[str]:
        """Namespaces and processes of this grid still there (none after cleanup)."""
        return self.network.leftovers() + [
            proc.name for proc in self.spawner.procs if proc.alive()]

    def logs(self, tail: int = 4000) -> str:
        """The end of every process's stderr, for a failed test's report."""
        return "\n".join(f"----- {proc.name} stderr -----\n{proc.stderr()[-tail:]}"
                         for proc in self.spawner.procs)
