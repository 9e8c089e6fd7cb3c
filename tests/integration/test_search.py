"""``ctl search`` on whole nodes in one process: content found through its tag records and streams through their
adverts' capabilities (the ``index:cap:<tag>`` records), each result marked with its kind."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import trio
from typer.testing import CliRunner

from overlay_cli.main import app
from overlay_node.crypto.uhrp import url_for_hash
from overlay_node.services.content_common import ContentMeta
from tests.conftest import NodeFactory
from tests.integration.test_content import start_network, write_random

CONTENT_KEYS = {"kind", "hash", "size", "price", "content_type", "title", "producer", "tags", "uhrp_url"}


async def cli(*args: str) -> Any:
    runner = CliRunner()
    return await trio.to_thread.run_sync(lambda: runner.invoke(app, list(args)))


async def test_search_by_tag_lists_content_and_streams_marked_by_kind(start_node: NodeFactory, tmp_path: Path) -> None:
    with trio.fail_after(40):
        producer, _, searcher = await start_network(start_node, 3)
        me = producer.info.identity_key
        source = tmp_path / "forecast.txt"
        cid = write_random(source, 10_000).hex()
        meta = ContentMeta(title="forecast", tags=("weather",), content_type="text/plain")
        await producer.content.publish(source, meta=meta, replication=0)
        streams = producer.streams.producer
        await streams.create("rain-radar", pricing_model="per-packet", rate=5, tags=("weather", "radar"))
        await streams.create("stock-ticks", rate=1, tags=("finance",))

        search = partial(searcher.content.search, adverts=searcher.adverts)
        found = await search(tags=("weather",))
        assert [(r["kind"], r.get("hash") or r.get("stream_id")) for r in found] == [
            ("content", cid),
            ("stream", "rain-radar"),
        ]
        content, stream = found
        assert set(content) == CONTENT_KEYS
        assert (content["producer"], content["tags"]) == (me, ["weather"])
        assert content["uhrp_url"] == url_for_hash(bytes.fromhex(cid))
        assert (stream["producer"], stream["price"], stream["pricing_model"]) == (me, 5, "per-packet")
        assert (stream["tags"], stream["capabilities"]) == (["weather"], ["weather", "radar"])

        # the filters apply to streams too; a stream has no content type
        assert await search(tags=("radar",)) == [stream | {"tags": ["radar"]}]
        assert await search(tags=("weather",), max_price=4) == [content]
        assert await search(tags=("weather",), content_type="text/plain") == [content]
        assert await search(tags=("weather",), producer="02" + "00" * 32) == []
        assert await search(tags=("finance",), max_price=0) == []
        # without the adverts (as before): content only
        assert await searcher.content.search(tags=("weather",)) == [content]

        # the CLI: the same results in JSON (with every key content results had), and the kind in the table
        dir_s = str(searcher.data_dir.path)
        out = await cli("--data-dir", dir_s, "--json", "ctl", "search", "--tags", "weather")
        assert out.exit_code == 0, out.output
        results = json.loads(out.stdout)["results"]
        assert results == found
        human = await cli("--data-dir", dir_s, "ctl", "search", "--tags", "weather,finance")
        assert human.exit_code == 0, human.output
        lines = human.stdout.splitlines()
        assert any("stream" in line and "rain-radar" in line for line in lines), human.stdout
        assert any("stream" in line and "stock-ticks" in line for line in lines), human.stdout
        assert any("content" in line and url_for_hash(bytes.fromhex(cid)) in line for line in lines), human.stdout

        # a closed stream's advert is revoked: search no longer lists it
        await streams.close("rain-radar")
        after = await search(tags=("weather",))
        assert [r["kind"] for r in after] == ["content"]
