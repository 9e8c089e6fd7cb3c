"""The fast fuzzer: a seeded, coverage-free mutation fuzzer that drives every decoder surface in-process, a million
inputs per surface in minutes (the hypothesis properties of this directory manage about a thousand a second).

``python -m tests.fuzz.fast --inputs 1000000 [--seed S] [--surface NAME ...] [--live|--no-live]``

Each surface is a generator (a seed encoding with a few :class:`Mutator` operations done to it: byte flips,
inserts, deletes, truncations, splices between seeds, interesting integers and CompactSize numbers, meaningful
tokens, and structure-aware changes of CBOR and JSON values and of HTTP heads) and a check that calls the real
decoder. An input the decoder refuses with the project's error hierarchy (``OverlayError``, or the ``ValueError`` a
few byte-level readers document) is an expected refusal; any other exception, or a broken invariant
(``AssertionError``), is a crash: its input is printed as hex and saved under ``bench/results/fuzz-crashes/``.
RSS is read from ``/proc/self`` before and after each surface. The live surfaces (a subprocess node attacked on its
sockets) are in :mod:`tests.fuzz.live`; both write their rows into ``bench/results/fuzz.json``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing
import os
import platform
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from overlay_node.crypto.bump import varint_bytes

from .mutate import TOKENS, RandomChooser, mutate_value, random_value

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "fuzz.json"
CRASHES = ROOT / "bench" / "results" / "fuzz-crashes"
#: inputs of one kind of crash (exception type and where it was raised) saved; the rest are only counted
SAVE_PER_KIND = 3

#: integers at the edges of every width a parser reads (lengths, counts, indices, timestamps)
INTERESTING: tuple[int, ...] = (
    0, 1, 2, 7, 8, 15, 16, 23, 24, 31, 32, 33, 63, 64, 100, 127, 128, 255, 256, 512, 1000, 1024, 4096, 32767, 32768,
    65535, 65536, 2**24, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1,
)  # fmt: skip


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def compact_size(n: int) -> bytes:
    """Bitcoin's VarInt (CompactSize) of ``n`` (any size: the top widths wrap)."""
    return varint_bytes(n) if n <= 0xFFFFFFFF else b"\xff" + (n % 2**64).to_bytes(8, "little")


class Mutator:
    """Seeded mutations of byte strings and plain values (see the module docstring)."""

    def __init__(self, rng: random.Random, tokens: Sequence[bytes] = TOKENS) -> None:
        self.rng = rng
        self.choose = RandomChooser(rng)
        self.tokens = tokens

    def new_value(self, *, json_safe: bool = False) -> Any:
        return random_value(self.rng, json_safe=json_safe)

    def value(self, value: Any, *, json_safe: bool = False) -> Any:
        """``value`` with one to three fields changed, removed, added or replaced, at any depth."""
        for _ in range(self.rng.randint(1, 3)):
            value = mutate_value(value, self.choose, lambda: self.new_value(json_safe=json_safe))
        return value

    def bytes_(self, data: bytes, seeds: Sequence[bytes], rounds: int = 4) -> bytes:
        """``data`` with 1 to ``rounds`` byte-level mutations."""
        rng = self.rng
        out = bytearray(data)
        for _ in range(rng.randint(1, rounds)):
            op = rng.randrange(13)
            n = len(out)
            pos = rng.randrange(n + 1)
            if op == 0 and n:  # flip a bit
                out[pos % n] ^= 1 << rng.randrange(8)
            elif op == 1:  # truncate
                del out[pos:]
            elif op == 2:  # insert random bytes
                out[pos:pos] = rng.randbytes(rng.randrange(1, 17))
            elif op == 3:  # delete a run
                del out[pos : pos + rng.randrange(1, 17)]
            elif op == 4:  # write a meaningful token over the bytes there
                token = self.tokens[rng.randrange(len(self.tokens))]
                out[pos : pos + len(token)] = token
            elif op == 5:  # insert a meaningful token
                out[pos:pos] = self.tokens[rng.randrange(len(self.tokens))]
            elif op == 6 and seeds:  # splice: our head, another seed's tail
                other = seeds[rng.randrange(len(seeds))]
                out = out[:pos] + other[rng.randrange(len(other) + 1) :]
            elif op == 7:  # duplicate a run
                out[pos:pos] = out[pos : pos + rng.randrange(1, 33)]
            elif op == 8:  # an interesting integer, 1/2/4/8 bytes, either byte order, written over
                width = (1, 2, 4, 8)[rng.randrange(4)]
                value = INTERESTING[rng.randrange(len(INTERESTING))] + rng.randrange(-1, 2)
                raw = (value % 2 ** (8 * width)).to_bytes(width, "little" if rng.random() < 0.5 else "big")
                out[pos : pos + width] = raw
            elif op == 9:  # a CompactSize number written over (transaction counts, script lengths)
                raw = compact_size(INTERESTING[rng.randrange(len(INTERESTING))])
                out[pos : pos + len(raw)] = raw
            elif op == 10 and n:  # add or subtract a little
                out[pos % n] = (out[pos % n] + rng.randrange(-35, 36)) % 256
            elif op == 11 and n > 1:  # swap two runs
                a, b = sorted((rng.randrange(n), rng.randrange(n)))
                size = min(rng.randrange(1, 17), b - a)
                out[a : a + size], out[b : b + size] = out[b : b + size], out[a : a + size]
            elif n:  # set one byte
                out[pos % n] = rng.randrange(256)
        return bytes(out)

    def cbor(self, seed: Any) -> bytes:
        """A CBOR value with its fields changed, encoded again (the decoder meets well-formed CBOR of odd shape)."""
        try:
            return bytes(cbor2.dumps(self.value(seed)))
        except (cbor2.CBOREncodeError, ValueError, TypeError):
            return bytes(cbor2.dumps(seed))

    def json(self, seed: Any) -> bytes:
        return json.dumps(self.value(seed, json_safe=True)).encode()

    def http_head(self, request: bytes) -> bytes:
        """A request with its head changed line by line: lines dropped, doubled or swapped, a header's value or
        name replaced by an odd one, Content-Length set to an interesting number, folds and bare LFs."""
        rng = self.rng
        head, sep, body = request.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(lines))
            op = rng.randrange(8)
            if op == 0 and len(lines) > 1:
                del lines[i]
            elif op == 1:
                lines.insert(i, lines[i])
            elif op == 2:
                j = rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
            elif op == 3:
                name = lines[i].partition(b":")[0] or b"X"
                lines[i] = name + b": " + self.tokens[rng.randrange(len(self.tokens))]
            elif op == 4:
                n = INTERESTING[rng.randrange(len(INTERESTING))] + rng.randrange(-1, 2)
                value = str(n).encode() if rng.random() < 0.8 else b"%d, %d" % (n, n)
                lines.insert(i + 1, b"Content-Length: " + value)
            elif op == 5:
                lines.insert(i + 1, b"Transfer-Encoding: " + rng.choice([b"chunked", b"gzip, chunked", b"chunked, x"]))
            elif op == 6:
                lines.insert(i + 1, rng.choice([b" folded", b"\tfolded", b"X-A:\n b", b"bad header", b": v"]))
            else:
                lines[i] = lines[i].swapcase() if rng.random() < 0.5 else lines[i].replace(b" ", b"  ")
        return b"\r\n".join(lines) + (sep or b"\r\n\r\n") + body


# -- the surfaces ----------------------------------------------------------------------------------------------------


@dataclass
class FastSurface:
    """One decoder surface: how an input is made from the seeds, and the check that calls the decoder."""

    name: str
    generate: Callable[[Mutator], bytes]
    check: Callable[[bytes], object]
    refusals: tuple[type[BaseException], ...]


@dataclass
class Outcome:
    """What the run of one surface did."""

    name: str
    inputs: int = 0
    refused: int = 0
    crashes: int = 0
    seconds: float = 0.0
    rss_before: int = 0
    rss_after: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    saved: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "refused": self.refused,
            "crashes": self.crashes,
            "seconds": round(self.seconds, 1),
            "inputs_per_second": round(self.inputs / self.seconds) if self.seconds else 0,
            "rss_before_mib": round(self.rss_before / 2**20, 1),
            "rss_after_mib": round(self.rss_after / 2**20, 1),
            **({"crash_kinds": self.kinds, "crash_files": self.saved} if self.crashes else {}),
        }


def _crash_kind(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
    return f"{type(exc).__name__} at {where}"


def _save_crash(surface: str, data: bytes, exc: BaseException) -> str:
    CRASHES.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in surface)
    path = CRASHES / f"{slug}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    detail = "".join(traceback.format_exception(exc))
    path.with_suffix(".txt").write_text(f"surface: {surface}\ninput: {data.hex()}\n\n{detail}")
    print(f"CRASH {surface}: {type(exc).__name__}: {exc}\n  input ({len(data)} bytes): {data.hex()}", flush=True)
    return str(path.relative_to(ROOT))


def run_surface(surface: FastSurface, inputs: int, rng: random.Random) -> Outcome:
    """``inputs`` inputs of ``surface``; crashes counted, their inputs saved (a few of each kind)."""
    out = Outcome(surface.name, rss_before=rss())
    mutator = Mutator(rng)
    generate, check, refusals = surface.generate, surface.check, surface.refusals
    began = time.monotonic()
    for _ in range(inputs):
        data = generate(mutator)
        try:
            check(data)
        except refusals:
            out.refused += 1
        except Exception as exc:  # noqa: BLE001 -- any other exception is a finding, counted and saved
            out.crashes += 1
            kind = _crash_kind(exc)
            out.kinds[kind] = out.kinds.get(kind, 0) + 1
            if out.kinds[kind] <= SAVE_PER_KIND:
                out.saved.append(_save_crash(surface.name, data, exc))
    out.inputs = inputs
    out.seconds = time.monotonic() - began
    out.rss_after = rss()
    return out


#: inputs per task when a surface is shared between worker processes (``--jobs``)
CHUNK = 100_000


def _run_chunk(task: tuple[int, int, int]) -> Outcome:
    index, inputs, seed = task
    return run_surface(surfaces()[index], inputs, random.Random(seed))


def _merge(outcomes: list[Outcome]) -> Outcome:
    out = Outcome(outcomes[0].name, rss_before=min(o.rss_before for o in outcomes))
    for o in outcomes:
        out.inputs += o.inputs
        out.refused += o.refused
        out.crashes += o.crashes
        out.seconds += o.seconds
        out.saved += o.saved
        for kind, count in o.kinds.items():
            out.kinds[kind] = out.kinds.get(kind, 0) + count
    out.rss_after = max(o.rss_after for o in outcomes)
    return out


def run_in_process(indices: list[int], inputs: int, seed: int, jobs: int) -> dict[str, dict[str, Any]]:
    """Each surface of ``indices`` for ``inputs`` inputs, in chunks of :data:`CHUNK` (chunk ``c`` of surface ``i``
    is seeded ``seed + 1_000_003 * i + c``) shared by ``jobs`` worker processes; a row per surface, printed as its
    last chunk finishes. With several jobs, a row's seconds are the sum of its chunks' (inputs/s per core)."""
    tasks = [
        (i, min(CHUNK, inputs - start), seed + 1_000_003 * i + c)
        for i in indices
        for c, start in enumerate(range(0, inputs, CHUNK))
    ]
    names = [s.name for s in surfaces()]
    rows: dict[str, dict[str, Any]] = {}
    done: dict[int, list[Outcome]] = {}
    left = {i: sum(1 for t in tasks if t[0] == i) for i in indices}
    with multiprocessing.get_context("fork").Pool(jobs) if jobs > 1 else _Serial() as pool:
        for task, outcome in zip(tasks, pool.imap(_run_chunk, tasks), strict=True):
            done.setdefault(task[0], []).append(outcome)
            left[task[0]] -= 1
            if not left[task[0]]:
                name = names[task[0]]
                rows[name] = _merge(done.pop(task[0])).row()
                print(table_line(name, rows[name]), flush=True)
    return rows


class _Serial:
    """A pool of one: this process."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def imap(self, fn: Callable[[Any], Outcome], tasks: list[Any]) -> Iterator[Outcome]:
        return map(fn, tasks)


@functools.cache
def surfaces() -> list[FastSurface]:
    from .fast_surfaces import all_surfaces

    return all_surfaces()


# -- the report ------------------------------------------------------------------------------------------------------

HEADER = f"{'surface':<30}{'inputs':>10}{'refused':>10}{'crashes':>8}{'in/s':>8}{'RSS MiB':>15}{'ctl max s':>10}"


def table_line(name: str, row: dict[str, Any]) -> str:
    mem = f"{row.get('rss_before_mib', 0):.0f}->{row.get('rss_after_mib', 0):.0f}"
    worst = row.get("status_worst_s")
    ctl = f"{worst:.3f}" if isinstance(worst, float | int) else "-"
    refused = row.get("refused", "-")
    return (
        f"{name:<30}{row['inputs']:>10}{refused!s:>10}{row['crashes']:>8}{row['inputs_per_second']:>8}"
        f"{mem:>15}{ctl:>10}"
    )


def save(rows: dict[str, dict[str, Any]], extra: dict[str, Any], *, fresh: bool) -> dict[str, Any]:
    """Write ``rows`` to ``bench/results/fuzz.json``: a new file when this run fuzzed every surface (``fresh``),
    else merged into it (rows of other surfaces, from other runs, stay; so do the atheris figures)."""
    try:
        report = {} if fresh else json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        report = {}
    if not isinstance(report, dict):
        report = {}
    report.setdefault("surfaces", {}).update(rows)
    report.update(extra)
    report["python"] = platform.python_version()
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["total_inputs"] = sum(r.get("inputs", 0) for r in report["surfaces"].values())
    report["total_crashes"] = sum(r.get("crashes", 0) for r in report["surfaces"].values())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    print(HEADER)
    for name, row in rows.items():
        print(table_line(name, row))
    print(f"saved {RESULTS.relative_to(ROOT)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.fast", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per surface")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (printed; repeat a run with it)")
    parser.add_argument("--surface", action="append", default=[], help="only surfaces whose name contains this")
    parser.add_argument("--live", action=argparse.BooleanOptionalAction, default=True, help="the socket surfaces")
    parser.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=True, help="the decoders")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for the in-process surfaces")
    args = parser.parse_args(argv)
    seed = random.randrange(2**32) if args.seed is None else args.seed
    print(f"fuzz: seed {seed} (repeat with --seed {seed}), {args.inputs} inputs per surface", flush=True)
    began = time.monotonic()
    rows: dict[str, dict[str, Any]] = {}
    if args.in_process:
        indices = [i for i, s in enumerate(surfaces()) if not args.surface or any(w in s.name for w in args.surface)]
        rows.update(run_in_process(indices, args.inputs, seed, args.jobs))
    extra: dict[str, Any] = {"seed": seed, "inputs_per_surface": args.inputs}
    if args.live:
        from . import live

        live_rows, live_extra = live.run(args.inputs, seed, only=args.surface)
        rows.update(live_rows)
        extra["live"] = live_extra
    extra["wall_seconds"] = round(time.monotonic() - began, 1)
    save(rows, extra, fresh=not args.surface and args.in_process and args.live)
    print()
    print_table(rows)
    print(f"fuzz: {sum(r['inputs'] for r in rows.values())} inputs in {extra['wall_seconds']} s, seed {seed}")
    crashes = sum(r["crashes"] for r in rows.values())
    if crashes:
        print(f"fuzz: {crashes} crashes; inputs saved under {CRASHES.relative_to(ROOT)}/")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
