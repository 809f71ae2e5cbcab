#!/usr/bin/env python3
"""A foreign prefork master, in Python (standard library only), for the interop test.

Usage: foreign_master.py PATH_TO_HELLO_EXAMPLE

Binds 127.0.0.1:0, starts the `hello` example as a prefork child the way fasthttp's master
does (FASTHTTP_PREFORK_CHILD=1, the listening socket on fd 3, no PREFORK_WORKER_ID), checks
that `GET /` is answered with "Hello from worker 0", then terminates the child. Exits 0 on
success; otherwise prints what went wrong and exits 1. The child is killed in every case.
"""

import os
import signal
import socket
import subprocess
import sys
import time

DEADLINE = 20.0


def fail(msg):
    print("foreign_master.py: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def get(port):
    """One HTTP/1.1 request; the whole response (the server closes on Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        chunks = []
        while True:
            data = conn.recv(4096)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def main():
    if len(sys.argv) != 2:
        fail("usage: foreign_master.py PATH_TO_HELLO_EXAMPLE")
    hello = sys.argv[1]
    if not os.access(hello, os.X_OK):
        fail("not an executable: " + hello)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    fd = listener.fileno()

    def listener_on_fd3():
        # Runs in the child between fork and exec: the listener becomes fd 3, inheritable.
        if fd == 3:
            os.set_inheritable(3, True)
        else:
            os.dup2(fd, 3, inheritable=True)

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFORK_WORKER_ID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
    }
    env["FASTHTTP_PREFORK_CHILD"] = "1"
    # --addr would be ignored: a child serves the inherited socket.
    child = subprocess.Popen(
        [hello, "--workers", "4", "--addr", "127.0.0.1:1"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=listener_on_fd3,
        close_fds=False,
    )
    ok = False
    try:
        response = get(port)
        if not response.startswith("HTTP/1.1 200 OK"):
            fail("unexpected response: %r" % response)
        body = response.split("\r\n\r\n", 1)[-1]
        if not body.startswith("Hello from worker 0 (pid %d)" % child.pid):
            fail("unexpected body %r (child pid %d)" % (body, child.pid))
        # A child never forks workers of its own.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            kids = [
                p
                for p in os.listdir("/proc")
                if p.isdigit() and parent_of(int(p)) == child.pid
            ]
            if kids:
                fail("the child started processes of its own: %s" % kids)
            time.sleep(0.1)
        if child.poll() is not None:
            fail("the child exited early with %s" % child.returncode)
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            fail("the child ignored SIGTERM")
        # The hello example drains on TERM (the shutdown notice) and exits 0.
        if child.returncode != 0:
            fail("the child ended with %s, expected a drain and exit code 0" % child.returncode)
        ok = True
        print("hello served %r as a foreign master's child" % body.strip())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if not ok:
            out, err = child.communicate()
            sys.stderr.write(out.decode("utf-8", "replace"))
            sys.stderr.write(err.decode("utf-8", "replace"))
        listener.close()


def parent_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[1])


if __name__ == "__main__":
    main()
