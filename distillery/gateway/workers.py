"""Several gateway processes on one port: ``distillery gateway --workers N``.

A process runs one event loop on one core, so N worker processes each accept on the port through a socket of their
own (``SO_REUSEPORT``: the kernel spreads new connections over them) and answer alone. The parent serves nothing: it
stores what earlier runs left in journals no worker will open, reserves the port, starts the workers, and starts a
worker again when one dies, while the others serve on.

- **Journals.** Worker ``i`` records through its own journal (``worker_journal``), so a kill -9 of it loses nothing:
  its successor stores what it left first, as a single gateway does on restart. The parent holds the lock of the
  configured journal, so a second gateway on the same journal is refused, workers or not.
- **Routes, keys, autopilot evidence** are shared through the log store, as between several gateways. Each worker
  judges its own rollback window; a route one worker steps back is obeyed by the others at their next route refresh
  (``route_refresh_s``, 1 s by default).
- **Metrics.** ``/metrics`` answers the sum over the workers (``distillery.gateway.metrics.WorkerShare``).
- **What a kill -9 of a worker costs:** the calls in flight on it and the connections in its accept queue are cut
  (their callers see a connection error); calls it answered are in its journal.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from distillery.capture import Recorder, lock_journal
from distillery.errors import DistilleryError
from distillery.gateway.config import GatewayConfig
from distillery.gateway.metrics import WorkerShare
from distillery.store import LogStore

_FAST_EXIT_S = 5.0  # a worker that exits this soon after its start, this many times in a row, stops the gateway:
_FAST_EXITS = 3  # it cannot start (its log says why), and starting it again would not help


def workers_folder(journal_path: Path) -> Path:
    return journal_path.with_name(journal_path.name + ".workers")


def worker_journal(journal_path: Path, index: int) -> Path:
    """Worker ``index``'s journal: ``<journal>.workers/<index>/<journal's name>``, the same across its restarts."""
    return workers_folder(journal_path) / str(index) / journal_path.name


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A socket bound to ``host:port`` (port 0: one the kernel picks) with ``SO_REUSEPORT``, never listening: it keeps
    the port this gateway's while workers restart, and takes no connection. A port another process listens on, with
    ``SO_REUSEPORT`` or not, is refused: sharing it would split the calls with that process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port left in TIME_WAIT by our last run is free
    try:
        probe.bind((host, port))
        port = probe.getsockname()[1]
    except OSError as exc:
        probe.close()
        if exc.errno == errno.EADDRINUSE:
            raise DistilleryError(f"port {port} on {host} is in use by another process: stop it, or give the gateway "
                                  "another port") from None
        raise DistilleryError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    probe.close()
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))
    return holder, port


def store_leftovers(store: LogStore, journal_path: Path, workers: int) -> int:
    """Store the rows of journals no worker of this run will open: the single gateway's, and those of workers past
    ``workers`` (an earlier run had more). What the store does not take stays in them, for the next start."""
    journals = [journal_path] + [worker_journal(journal_path, int(folder.name))
                                 for folder in workers_folder(journal_path).glob("*")
                                 if folder.name.isdigit() and int(folder.name) >= workers]
    recovered = 0
    for journal in journals:
        if journal.exists() or any(journal.parent.glob(journal.name + ".replay-*")):
            recorder = Recorder(store, journal).start()
            recorder.stop()
            recovered += recorder.recovered
    return recovered


def supervise(config: GatewayConfig, serve_one: Callable[..., None]) -> None:
    """Run ``config.workers`` workers, each ``serve_one(config, reuse_port=True, share=...)``, until SIGINT or SIGTERM,
    then stop them (each shuts down as one gateway does). ``config`` checked its worker count when it was made."""
    config.journal_path.parent.mkdir(parents=True, exist_ok=True)
    store = LogStore(config.log_store_url)
    store.upgrade()
    # before the lock: each leftover journal is opened by a recorder, which takes its lock
    if recovered := store_leftovers(store, config.journal_path, config.workers):
        print(f"stored {recovered} rows earlier runs left in their journals", file=sys.stderr, flush=True)
    lock = lock_journal(config.journal_path)
    store.engine.dispose()  # no pooled connection may cross the fork
    holder, port = reserve_port(config.host, config.port)
    shares = workers_folder(config.journal_path) / "metrics"
    shutil.rmtree(shares, ignore_errors=True)  # a new run counts from zero, as one gateway does on its start
    # fork: the parent holds no thread and no connection, and a worker started again is up in milliseconds
    context = multiprocessing.get_context("fork")

    def start(index: int) -> multiprocessing.Process:
        worker_config = dataclasses.replace(config, port=port, journal_path=worker_journal(config.journal_path, index))
        process = context.Process(target=_worker, name=f"gateway-worker-{index}",
                                  args=(serve_one, worker_config, WorkerShare(shares, index), holder, os.getpid()))
        process.start()
        return process

    stopping = False

    def stop(_signal, _frame) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers = {index: start(index) for index in range(config.workers)}
    started = {index: time.monotonic() for index in workers}
    fast_exits = dict.fromkeys(workers, 0)
    print(f"{config.workers} workers on http://{config.host}:{port}/v1 (pids "
          f"{', '.join(str(p.pid) for p in workers.values())})", file=sys.stderr, flush=True)
    try:
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p in workers.values()], timeout=0.5)
            for index, process in list(workers.items()):
                if stopping or process.is_alive():
                    continue
                fast_exits[index] = fast_exits[index] + 1 if time.monotonic() - started[index] < _FAST_EXIT_S else 0
                if fast_exits[index] >= _FAST_EXITS:
                    raise DistilleryError(f"gateway worker {index} exited {_FAST_EXITS} times within "
                                          f"{_FAST_EXIT_S:g} s of its start (exit code {process.exitcode}): its log "
                                          "above says why")
                print(f"gateway worker {index} (pid {process.pid}) exited with code {process.exitcode}; starting it "
                      "again", file=sys.stderr, flush=True)
                workers[index], started[index] = start(index), time.monotonic()
    finally:
        for process in workers.values():
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker finishes its calls and flushes its journal
        for process in workers.values():
            process.join(90)
            if process.is_alive():
                process.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        holder.close()
        os.close(lock)


def _worker(serve_one, config: GatewayConfig, share: WorkerShare, holder: socket.socket, parent: int) -> None:
    holder.close()  # the parent's; this worker listens on a socket of its own
    if sys.platform == "linux":  # the worker ends with its parent, even a parent killed with SIGKILL
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)  # the event loop installs its own
    serve_one(config, reuse_port=True, share=share)
