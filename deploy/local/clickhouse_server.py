#!/usr/bin/env python3
"""Run a real ClickHouse server (the engine in the PyPI wheel chdb-core) with HTTP and native TCP
listeners, for local development and tests on machines without Docker.

Started by deploy/local/clickhouse.sh.

How: chdir into RUN_DIR (which holds config.xml: listen_host, ports, display_name), then run
    SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP;
    SELECT count() FROM file('RUN_DIR/stop.fifo', 'LineAsString')
through chdb._chdb.query(..., path=DATA_DIR) in a thread. The server lives as long as that query
blocks reading the FIFO. SIGTERM/SIGINT write one line into the FIFO: the query ends, the
listeners close and the process exits 0. If the query ends by itself (an engine error such as a
port in use or a locked data dir, printed to stderr), the process exits 1.
Only one query per process works in this build ("EventNotifier is initialized twice").
"""

import argparse
import errno
import os
import signal
import sys
import threading
import time


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} clickhouse_server.py[{os.getpid()}]: {msg}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="directory holding config.xml; the FIFO goes here")
    ap.add_argument("--data-dir", help="ClickHouse data directory (default RUN_DIR/data)")
    ap.add_argument("--pid-file", help="write this process's pid here (default RUN_DIR/server.pid)")
    args = ap.parse_args()

    run_dir = os.path.abspath(args.run_dir)
    data_dir = os.path.abspath(args.data_dir or os.path.join(run_dir, "data"))
    pid_file = os.path.abspath(args.pid_file or os.path.join(run_dir, "server.pid"))
    fifo = os.path.join(run_dir, "stop.fifo")
    if not os.path.isfile(os.path.join(run_dir, "config.xml")):
        log(f"no config.xml in {run_dir}")
        return 2
    if "'" in fifo or "\\" in fifo:
        log(f"unsupported characters in run dir path: {run_dir}")
        return 2

    os.makedirs(data_dir, exist_ok=True)
    # ClickHouse reads config.xml from the current directory at the time of the query call.
    os.chdir(run_dir)
    if os.path.lexists(fifo) and not _is_fifo(fifo):
        os.unlink(fifo)
    if not os.path.exists(fifo):
        os.mkfifo(fifo, 0o600)
    with open(pid_file + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(pid_file + ".tmp", pid_file)

    stopping = threading.Event()

    def write_stop_line() -> None:
        # Non-blocking open fails with ENXIO until ClickHouse has the FIFO open for reading
        # (e.g. a signal during start-up); retry until it is, or until the query has ended.
        while query_thread.is_alive():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno in (errno.ENXIO, errno.EINTR):
                    time.sleep(0.1)
                    continue
                log(f"cannot open {fifo} for writing: {e}")
                return
            try:
                os.write(fd, b"stop\n")
            finally:
                os.close(fd)
            return

    def on_signal(signum, _frame) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log(f"received {signal.Signals(signum).name}, stopping")
        threading.Thread(target=write_stop_line, name="stop-writer", daemon=True).start()

    result = {}

    def run_query() -> None:
        import chdb._chdb as chdb_core  # imported here so that a failing import is logged below

        sql = (
            "SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
            f"SELECT count() FROM file('{fifo}', 'LineAsString')"
        )
        try:
            res = chdb_core.query(sql, "TSV", path=data_dir)
            # Engine errors (e.g. "Address already in use") are printed to stderr rather than
            # raised; has_error() is checked in case a build does report them.
            if hasattr(res, "has_error") and res.has_error():
                result["error"] = res.error_message()
        except BaseException as e:  # noqa: BLE001 - report whatever the engine raised
            result["error"] = e

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    log(f"starting: run dir {run_dir}, data dir {data_dir}")
    query_thread = threading.Thread(target=run_query, name="clickhouse", daemon=True)
    query_thread.start()
    # Join with a timeout so that the main thread keeps running Python signal handlers.
    while query_thread.is_alive():
        query_thread.join(0.2)

    if "error" in result:
        log(f"server query failed: {result['error']}")
        code = 1
    elif stopping.is_set():
        log("stopped")
        code = 0
    else:
        # Usually an engine error, printed above (listen failure, data dir locked, ...).
        log("server query ended without a stop request; see the ClickHouse messages above")
        code = 1
    try:
        with open(pid_file) as f:
            if f.read().strip() == str(os.getpid()):
                os.unlink(pid_file)
    except OSError:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _is_fifo(path: str) -> bool:
    import stat

    return stat.S_ISFIFO(os.lstat(path).st_mode)


if __name__ == "__main__":
    sys.exit(main())
