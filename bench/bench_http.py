"""Benchmark of the HTTP/1.1 server alone (``overlay_node/net/http_server.py`` through ``net/listen.py``'s
``serve_app``): what one node's HTTP stack costs per request, without the overlay engine behind it.

Run from the repository root::

    .venv/bin/python bench/bench_http.py [--quick] [-n 50000] [--out bench/results/bench_http.json]

The server runs in its own process (``--serve``: one trio loop, as in a daemon) and serves a Starlette app built like
the node's public app (``api/public.py``'s ``public_app`` over a stand-in node, plus one route):

- ``GET /health/live``: the public app's liveness answer, ``{"status":"ok"}`` (the HTTP floor);
- ``POST /lookup`` (a lookup-like echo): reads the body the way ``api/overlay.py``'s ``/lookup`` does
  (``read_body`` with a 64 KiB limit, ``parse_json``, the ``service``/``query`` check), answers the question back
  inside an ``output-list`` JSON object, with overlay-express's CORS headers.

Load generator: ``bench/http_client.mjs``, a Node.js keep-alive client (node:http, one Agent, at most ``conc``
requests in flight over ``conc`` connections), so that the client is not the bottleneck. Each phase is warmed up
(``--warmup`` requests, not timed), then ``-n`` requests are timed. Phases: each route with 1 and with 8 clients.
Per phase: requests/s, p50/p99/max latency, the server process's CPU per request (``/proc``, all threads) and
the client's. Prints a table and saves ``bench/results/bench_http.json``; exits non-zero only when a request fails,
never on time.

``bench/results/bench_http_hypercorn.json`` is the same benchmark run once against the server we had before
(hypercorn 0.18 with h11, through the ``serve_app`` of that time), just before it was replaced; hypercorn is no
longer a dependency, so that run cannot be repeated from this tree.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from results_io import save  # bench/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIENT = ROOT / "bench" / "http_client.mjs"
RESULTS = ROOT / "bench" / "results" / "bench_http.json"
QUESTION = json.dumps({"service": "ls_bench", "query": {"txid": "ab" * 32, "outputIndex": 0}})
#: what overlay-express sends with every answer (as api/overlay.py)
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Allow-Methods": "*",
    "Access-Control-Expose-Headers": "*",
    "Access-Control-Allow-Private-Network": "true",
}


# -- the server process ------------------------------------------------------------------------------------------


def bench_app() -> Any:
    """The public app over a stand-in node, plus the lookup-like echo route."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from overlay_node.api.common import parse_json, read_body
    from overlay_node.api.public import public_app
    from overlay_node.metrics import Metrics

    class StandIn:
        ready = True
        metrics = Metrics()

    async def lookup(request: Request) -> Response:
        body = await read_body(request, 64 * 1024)
        question = parse_json(body) if body else None
        if not isinstance(question, dict) or not isinstance(question.get("service"), str) or "query" not in question:
            return JSONResponse({"status": "error", "message": "Invalid request"}, status_code=400, headers=CORS)
        return JSONResponse({"type": "output-list", "outputs": [], "echo": question}, headers=CORS)

    return public_app(StandIn(), [Route("/lookup", lookup, methods=["POST"])])


def serve(port_file: Path) -> None:
    """Serve the bench app on 127.0.0.1 (a free port, written to ``port_file``) until SIGTERM or SIGINT."""
    import trio

    from overlay_node.net.listen import bind_tcp, serve_app

    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        sock = bind_tcp("127.0.0.1", 0)
        port = sock.getsockname()[1]
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

            async def stop() -> None:
                async for _ in signals:
                    return

            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: serve_app(
                        bench_app(), sock, shutdown_trigger=stop, graceful_timeout=1.0, task_status=task_status
                    )
                )
                tmp = port_file.with_suffix(".tmp")
                tmp.write_text(str(port))
                os.replace(tmp, port_file)

    trio.run(main)


# -- the driver --------------------------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-http-") as scratch:
        port_file = Path(scratch) / "port"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)], cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the bench server did not start")
                time.sleep(0.05)
            port = int(port_file.read_text())
            echo = json.dumps(
                {"type": "output-list", "outputs": [], "echo": json.loads(QUESTION)}, separators=(",", ":")
            )
            phases = []
            for conc in (1, 8):
                phases.append(
                    {
                        "name": f"live_c{conc}",
                        "method": "GET",
                        "path": "/health/live",
                        "body": None,
                        "conc": conc,
                        "count": args.n,
                        "expect": '{"status":"ok"}',
                    }
                )
            for conc in (1, 8):
                phases.append(
                    {
                        "name": f"lookup_echo_c{conc}",
                        "method": "POST",
                        "path": "/lookup",
                        "body": QUESTION,
                        "conc": conc,
                        "count": args.n,
                        "expect": echo,
                    }
                )
            config = {
                "port": port,
                "pid": server.pid,
                "clkTck": os.sysconf("SC_CLK_TCK"),
                "warmup": args.warmup,
                "phases": phases,
            }
            config_path = Path(scratch) / "client.json"
            config_path.write_text(json.dumps(config))
            done = subprocess.run(["node", str(CLIENT), str(config_path)], capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise SystemExit(f"the client failed:\n{done.stderr[-3000:]}")
            return {"phases": json.loads(done.stdout)}
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def print_table(results: dict[str, Any]) -> None:
    print(f"{'phase':<18} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'srv CPU ms/req':>15}")
    for name, p in results["phases"].items():
        print(
            f"{name:<18} {p['concurrency']:>7} {p['perSec']:>9.0f} {p['p50ms']:>8.3f} {p['p99ms']:>8.3f}"
            f" {p['serverCpuMsPerOp']:>15.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="-n 3000 (a run of a few seconds)")
    parser.add_argument("-n", type=int, default=None, help="timed requests per phase (default 50000)")
    parser.add_argument("--warmup", type=int, default=1000, help="untimed requests before each phase")
    parser.add_argument("--label", default="ours", help="a name for the server measured, saved with the figures")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to save the JSON results")
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve))
        return
    args.n = args.n or (3_000 if args.quick else 50_000)
    results = run_bench(args)
    failed = {name: p["firstError"] for name, p in results["phases"].items() if p["errors"]}
    results["server"] = args.label
    results["config"] = {"n": args.n, "warmup": args.warmup, "client": "bench/http_client.mjs (node:http keep-alive)"}
    save(args.out, results)
    print_table(results)
    print(f"saved {args.out}")
    if failed:
        raise SystemExit(f"requests failed: {failed}")


if __name__ == "__main__":
    main()
