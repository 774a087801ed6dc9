#!/usr/bin/env python3
"""The training run of profile-guided optimisation (tests/bench/pgo.sh).

Runs an instrumented `switchyard` (built with `-Cprofile-generate`) as the
echo backend and as `switchyard standalone` in front of it, and sends them
the suite's kinds of traffic: keep-alive requests (S1), a new connection
per request (S2), 64 KiB responses (S3), TLS keep-alive and handshakes (S4)
and WebSocket echo (S5). Both processes then stop the usual way (SIGTERM),
which writes their profiles. Bounded: about 25 seconds of load.

    python3 tests/bench/train.py BINARY
"""

import os
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402
import procs  # noqa: E402
import targets as tg  # noqa: E402


def main():
    binary = sys.argv[1]
    os.sched_setaffinity(0, {tg.LOAD_CORE})
    work = tempfile.mkdtemp(prefix="switchyard-train.")
    os.chmod(work, 0o755)
    try:
        cert = tg.make_cert(work)
        backend, backend_proc = tg.start_backend(binary, work)
        proxy = tg.start_switchyard(binary, work, backend.http_port, name="switchyard", cert=cert[:2], tls=True)
        procs.wait_http(proxy.http_port, tg.HOST, timeout=60)
        runs = [
            ("S1 keep-alive", lambda: load.wrk(proxy.url("/bytes/64"), 5, 32)),
            ("S2 new connections", lambda: load.wrk(proxy.url("/bytes/64"), 5, 32, headers=["Connection: close"])),
            ("S3 64 KiB", lambda: load.wrk(proxy.url("/bytes/65536"), 4, 32)),
            ("S4 TLS keep-alive", lambda: load.wrk(proxy.url("/bytes/64", tls=True), 4, 32)),
            ("S4 TLS handshakes",
             lambda: load.wrk(proxy.url("/bytes/64", tls=True), 3, 32, headers=["Connection: close"])),
            ("S5 WebSocket echo", lambda: load.ws_echo(proxy.http_port, 3)),
        ]
        for name, run in runs:
            result = run()
            print(f"train: {name}: {result['requests']} requests, {result['errors']} errors", flush=True)
            if result["requests"] == 0 or result["errors"]:
                sys.exit(f"train: {name} failed; the profile would not describe the suite's traffic")
        # SIGTERM: both shut down the usual way, and write their profiles
        # as they exit (the proxy after its shutdown delay, 5 s).
        for role, proc in (("the proxy", proxy.proc), ("the echo backend", backend_proc)):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            if proc.returncode != 0:
                sys.exit(f"train: {role} exited with {proc.returncode}; its profile may be missing")
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
