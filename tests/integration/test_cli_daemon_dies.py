"""A daemon that dies while ``ctl subscribe``, ``ctl publish`` or ``ctl access`` follows its answer: the CLI ends with
one line and the network exit code (7, docs/cli.md), never a traceback, never "no daemon" (5) or "ended without a
result" (1). Daemons and the devnet are subprocesses (scripts/cluster.py).

How the CLI learns of the death depends on the kernel: a process killed with bytes still unread on its side of the
control connection resets it (the CLI's read fails), one killed with nothing unread closes it quietly (the CLI reads
an end of file, as after a complete answer). Which of the two a kill -9 of a real daemon gives is a race, so the
quiet close, the case that was answered 5 and 1, is also made on purpose: a unix socket listener takes the
daemon's place in ``api.json``, reads the whole request, answers the head and a first line, then closes everything.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from cluster import Cluster, _cli

from overlay_node.errors import EXIT_CODES

pytestmark = pytest.mark.cluster


def test_subscribe_ends_with_one_line_when_its_daemon_is_killed(tmp_path: Path) -> None:
    with Cluster(2, root=tmp_path / "c") as cluster:
        producer, consumer = 0, 1
        cluster.ctl(consumer, "ctl", "wallet", "faucet", "100000")
        cluster.ctl(producer, "ctl", "stream", "create", "--stream-id", "ticks", "--rate", "1")
        source = tmp_path / "packets.ndjson"
        source.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(20)))
        cluster.ctl(producer, "ctl", "stream", "push", "ticks", "--file", str(source))
        sub = subprocess.Popen(
            [*_cli(), "--data-dir", cluster.members[consumer].data_dir, "ctl", "subscribe", "ticks", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert sub.stdout is not None
            first = json.loads(sub.stdout.readline())  # the stream is flowing: the event we kill on
            assert first["seq"] == 0
            assert first["payload"] == {"n": 0}  # a JSON packet is JSON in the line, not a string
            cluster.kill(consumer)
            _out, err = sub.communicate(timeout=60)
        finally:
            if sub.poll() is None:
                sub.kill()
        assert sub.returncode == EXIT_CODES["daemon_closed"] == 7, err
        assert "Traceback" not in err
        assert err.strip().splitlines() == [
            "error: the daemon closed the connection during `overlay-node ctl subscribe`; see its log"
        ]


def _dies_mid_answer(listener: socket.socket, first_line: bytes) -> None:
    """Accept one request, read all of it, answer a chunked head and ``first_line``, then close the listener and the
    connection with nothing unread: what the CLI sees of a daemon killed at that point without a reset."""
    conn, _ = listener.accept()
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:
            body += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.sendall(b"%x\r\n%s\r\n" % (len(first_line), first_line))
        listener.close()  # the process is gone: a later connection is refused


@pytest.mark.parametrize(
    ("command", "first_line"),
    [
        (["ctl", "subscribe", "ticks", "--json"], b'{"seq": 0, "payload": "p0"}\n'),
        (["ctl", "publish", "FILE", "--json"], b'{"event": "import", "done": 3, "total": 6}\n'),
        (["ctl", "access", "ab" * 32, "--output", "copy.bin"], b'{"event": "start", "size": 6}\n'),
    ],
    ids=["subscribe", "publish", "access"],
)
def test_daemon_closing_quietly_mid_answer_is_exit_7(tmp_path: Path, command: list[str], first_line: bytes) -> None:
    data_dir = tmp_path / "node"
    data_dir.mkdir(mode=0o700)
    path = data_dir / "control.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    (data_dir / "api.json").write_text(json.dumps({"control": str(path)}))
    (tmp_path / "FILE").write_bytes(b"abcdef")
    daemon = threading.Thread(target=_dies_mid_answer, args=(listener, first_line))
    daemon.start()
    try:
        done = subprocess.run(
            [*_cli(), "--data-dir", str(data_dir), *command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        daemon.join(timeout=60)
        listener.close()
    assert done.returncode == EXIT_CODES["daemon_closed"] == 7, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: the daemon closed the connection during `overlay-node {' '.join(command[:2])}`; see its log"
    ]
