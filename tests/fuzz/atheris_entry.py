"""Coverage-guided fuzzing (atheris, libFuzzer) of the hottest surfaces: ``frames`` (peer-link frames, every
message of every link), ``http`` (the HTTP/1.1 request parser, every request on the public and control ports),
``dht`` (datagram envelopes and messages, the signature check skipped), ``json`` (the bounded JSON reader of every
control and overlay body) and ``chain`` (raw, Extended Format and BEEF transaction streams).

``python -m tests.fuzz.atheris_entry <frames|http|dht|json|chain> <seconds>`` runs libFuzzer for that long in a
child process, seeded with the real encodings of ``tests/fuzz/seeds.py``, then adds its figures (inputs, crashes)
to ``bench/results/fuzz.json``. The same documented-errors property as the hypothesis tests: only the surface's
refusal (``RemoteProtocolError``, ``BadRequest``, ``Refusal``) may escape; anything else is a crash, saved by
libFuzzer with the input that caused it. Needs ``atheris`` (``.venv/bin/pip install atheris``); ``make fuzz``
skips it without."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: the fuzz report (tests/fuzz/runner.py writes it; not imported here, so that the child instruments only our code)
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "fuzz.json"


def one_frame(data: bytes) -> None:
    # imported here: the child imports them under atheris' instrumentation first (coverage guides the fuzzer)
    from overlay_node.errors import RemoteProtocolError
    from overlay_node.wire import frames as f

    try:
        frame = f.decode(data, max_size=64 * 1024)
    except RemoteProtocolError:
        return
    again = f.encode(frame)
    if f.encode(f.decode(again)) != again:
        raise AssertionError("a decoded frame does not encode back to itself")


def one_http(data: bytes) -> None:
    from overlay_node.errors import RemoteProtocolError
    from overlay_node.wire.http1 import RequestParser

    parser = RequestParser(max_request_line=256, max_head=1024, max_headers=16, max_body=4096)
    # the first byte says where to split the input in two (the parser must not care)
    cut = data[0] if data else 0
    try:
        for piece in (data[1 : 1 + cut], data[1 + cut :]):
            parser.receive_data(piece)
            while True:
                if parser.body_complete:
                    if parser.next_request() is None:
                        break
                    continue
                body, done = parser.read_body()
                if not body and not done:
                    break
    except RemoteProtocolError:
        return


def one_dht(data: bytes) -> None:
    from overlay_node.errors import RemoteProtocolError
    from overlay_node.wire import dht

    # no signature check (every input would stop there): the envelope and message decoders behind it
    try:
        dht.decode(data, now=_NOW[0], verify=lambda *_: True, max_skew=1e12)
    except RemoteProtocolError:
        return


_NOW = [0.0]


def one_json(data: bytes) -> None:
    from overlay_node.api.common import parse_json
    from overlay_node.errors import BadRequest

    try:
        parse_json(data, limit=8192)
    except BadRequest:
        return


def one_chain(data: bytes) -> None:
    from overlay_node.chain.formats import parse_stream
    from overlay_node.chain.refusals import Refusal

    try:
        parse_stream(data, max_items=4)
    except Refusal:
        return


TARGETS = {"frames": one_frame, "http": one_http, "dht": one_dht, "json": one_json, "chain": one_chain}


def _seed_items(surface: str) -> tuple[bytes, ...]:
    from . import seeds

    if surface == "frames":
        return seeds.frame_bytes()
    if surface == "dht":
        return seeds.dht_datagrams()
    if surface == "json":
        return seeds.json_texts()
    if surface == "chain":
        return seeds.chain_seeds().all
    return tuple(b"\x10" + r for r in seeds.HTTP_REQUESTS)


def corpus(surface: str, where: Path) -> None:
    items = _seed_items(surface)
    for i, item in enumerate(items):
        (where / f"seed-{i}").write_bytes(item)


def child(surface: str, args: list[str]) -> None:
    import atheris  # type: ignore[import-not-found, import-untyped, unused-ignore]

    target = TARGETS[surface]
    with atheris.instrument_imports(include=["overlay_node", "cbor2"]):
        import overlay_node.api.common
        import overlay_node.chain.formats
        import overlay_node.wire.dht
        import overlay_node.wire.frames
        import overlay_node.wire.http1  # noqa: F401
    from . import seeds

    _NOW[0] = seeds.NOW
    atheris.Setup([sys.argv[0], *args], target)
    atheris.Fuzz()


def main(surface: str, seconds: int) -> int:
    with tempfile.TemporaryDirectory(prefix=f"atheris-{surface}-") as tmp:
        work = Path(tmp)
        (work / "corpus").mkdir()
        corpus(surface, work / "corpus")
        args = [f"-max_total_time={seconds}", f"-artifact_prefix={work}/", "-print_final_stats=1", str(work / "corpus")]
        run = subprocess.run(
            [sys.executable, "-m", "tests.fuzz.atheris_entry", "--child", surface, *args],
            capture_output=True,
            text=True,
            check=False,
        )
        crashes = sorted(p.name for p in work.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
        found = [line for line in run.stderr.splitlines() if "Uncaught Python exception" in line or "ERROR:" in line]
    runs = re.findall(r"Done (\d+) runs", run.stderr) or re.findall(
        r"stat::number_of_executed_units:\s*(\d+)", run.stderr
    )
    inputs = int(runs[-1]) if runs else 0
    result: dict[str, Any] = {
        "inputs": inputs,
        "crashes": len(crashes) or len(found),
        "seconds": seconds,
        "exit_code": run.returncode,
    }
    if found:
        result["failure"] = found[0][:300]
    print(f"atheris {surface}: {inputs} inputs in {seconds} s, {result['crashes']} crashes")
    if result["crashes"]:
        print(run.stderr[-4000:])
    report = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    report.setdefault("atheris", {})[surface] = result
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if result["crashes"] else 0


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main(sys.argv[1], int(float(sys.argv[2]))))
