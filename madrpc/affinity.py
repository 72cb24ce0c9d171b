"""Keeping a broker's or a worker's own threads on one CPU (``--cpu N``).

A lone call is a chain of some fifteen hand-offs between threads: the client's, each
process's loop and its ZeroMQ I/O thread, an engine and its isolate's thread. Each wakes
the next, and waking a thread on a CPU that has gone idle costs far more than waking one
where the waker runs: on a virtual machine the idle CPU has to be brought back by the
host. On the 2-CPU development VM, keeping the broker and a worker (each with its I/O
thread) on one CPU took a lone trivial call from ~0.69 to ~0.50 ms, with throughput and
CPU-bound jobs unchanged: the engines, where JavaScript runs, stay free to use every CPU
(docs/performance.md, ninth round).

It is off by default, as CPU pinning is in most servers: it pays where wake-ups are dear
and the process's own work fits one CPU, and the operator knows which CPU is free.

:func:`pin_to_cpu` is for the process's start, before it has threads: threads and
processes inherit the CPUs of the thread that starts them. A worker passes the CPUs it
had before (:func:`cpu_list`) to its engines, which take them back (:func:`allow_cpus`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import ConfigError

__all__ = ["allow_cpus", "cpu_list", "parse_cpu_list", "pin_to_cpu", "supported"]


def supported() -> bool:
    """Whether this platform lets a thread choose its CPUs (Linux does)."""
    return hasattr(os, "sched_setaffinity")


def pin_to_cpu(cpu: int) -> frozenset[int]:
    """Keep the calling thread, and the threads and processes it starts from now on, on
    CPU ``cpu``; return the CPUs it was allowed before. ConfigError when ``cpu`` is not
    one of them, or the platform cannot do it."""
    if not supported():
        raise ConfigError("--cpu needs Linux (sched_setaffinity)")
    allowed = frozenset(os.sched_getaffinity(0))
    if cpu not in allowed:
        raise ConfigError(f"--cpu {cpu}: this process may only use CPUs {cpu_list(allowed)}")
    os.sched_setaffinity(0, {cpu})
    return allowed


def allow_cpus(cpus: Iterable[int]) -> None:
    """Let the calling thread (and what it starts) run on ``cpus`` again."""
    os.sched_setaffinity(0, set(cpus))


def cpu_list(cpus: Iterable[int]) -> str:
    """``0,1,5``: CPUs as an argument for an engine (:func:`parse_cpu_list`)."""
    return ",".join(str(cpu) for cpu in sorted(cpus))


def parse_cpu_list(text: str) -> frozenset[int]:
    """The CPUs of :func:`cpu_list`'s ``0,1,5``; ValueError for anything else."""
    cpus = frozenset(int(part) for part in text.split(","))
    if not cpus or min(cpus) < 0:
        raise ValueError(f"not a list of CPUs: {text!r}")
    return cpus
