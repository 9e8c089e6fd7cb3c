"""A whole node in process: lifecycle, api.json, control API over the unix socket, public HTTP, data-dir rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import trio

from overlay_node.errors import DataDirError
from overlay_node.node import Node
from tests.conftest import NodeFactory, new_data_dir, test_config


def control(node: Node) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=node.info.control)
    return httpx.AsyncClient(transport=transport, base_url="http://node", timeout=10)


async def test_start_status_public_http_and_stop(start_node: NodeFactory) -> None:
    node = await start_node("a", **{"node.name": "alpha"})
    api = json.loads(node.data_dir.api_path.read_text())
    assert api["identity_key"] == node.info.identity_key
    assert api["pid"] == os.getpid()
    assert api["control"] == node.info.control
    assert oct(os.stat(node.info.control).st_mode & 0o777) == "0o600"

    async with control(node) as c:
        status = (await c.get("/v1/status")).json()
    assert status["identity_key"] == node.info.identity_key
    assert status["name"] == "alpha"
    assert status["ready"] is True
    assert status["peers"] == 0
    assert status["swarm"][0].startswith("ws://127.0.0.1:")

    async with httpx.AsyncClient(base_url=node.info.http, timeout=10) as h:
        assert (await h.get("/health/live")).json() == {"status": "ok"}
        assert (await h.get("/health/ready")).status_code == 200
        metrics = (await h.get("/metrics")).text
        assert "overlay_up 1.0" in metrics
        missing = await h.get("/nope")
        assert missing.status_code == 404
        assert missing.json()["code"] == "not_found"

    async with control(node) as c:
        answer = await c.post("/v1/shutdown")
        assert answer.status_code == 202
    with trio.fail_after(10):
        await node.wait_stopped()
    assert not node.data_dir.api_path.exists()


async def test_three_nodes_link_through_the_control_api(start_node: NodeFactory) -> None:
    a, b, c = [await start_node(name) for name in "abc"]
    with trio.fail_after(20):
        async with control(a) as ca, control(b) as cb:
            for client, target in ((ca, b), (ca, c), (cb, c)):
                reply = await client.post("/v1/peers/connect", json={"address": target.info.swarm[0]})
                assert reply.status_code == 200, reply.text
                assert reply.json()["identity_key"] == target.info.identity_key
        for node in (a, b, c):
            others = [n.info.identity_key for n in (a, b, c) if n is not node]
            async with control(node) as cn:
                waited = await cn.post("/v1/peers/wait", json={"identity_keys": others, "timeout": 10})
                assert waited.status_code == 200, waited.text
                peers = (await cn.get("/v1/peers")).json()["peers"]
            assert sorted(p["identity_key"] for p in peers) == sorted(others)
        # the links carry requests: each node asks the others who they are
        for node in (a, b, c):
            for other in (a, b, c):
                if other is node:
                    continue
                link = node.peers.link(other.info.identity_key)
                assert link is not None
                info = await link.request("node.info", {})
                assert info["identity_key"] == other.info.identity_key


async def test_control_api_refuses_bad_requests(start_node: NodeFactory) -> None:
    node = await start_node("a")
    async with control(node) as c:
        bad_json = await c.post("/v1/peers/connect", content=b"{nope", headers={"content-type": "application/json"})
        assert bad_json.status_code == 400
        assert bad_json.json()["code"] == "bad_request"
        no_field = await c.post("/v1/peers/connect", json={"addr": "x"})
        assert no_field.status_code == 400
        assert "address" in no_field.json()["message"]
        huge = await c.post("/v1/peers/connect", content=b"x" * (2 * 1024 * 1024))
        assert huge.status_code == 400
        assert "too large" in huge.json()["message"]
        # a port nobody listens on: a clear dial error, and the node keeps serving
        with trio.fail_after(20):
            dead = await c.post("/v1/peers/connect", json={"address": "127.0.0.1:1"})
        assert dead.status_code in (502, 504)
        assert dead.json()["status"] == "error"
        assert (await c.get("/v1/status")).json()["ready"] is True


async def test_one_daemon_per_data_dir(start_node: NodeFactory) -> None:
    node = await start_node("a")
    twin = Node(node.data_dir, test_config())
    with pytest.raises(DataDirError, match="another daemon"):
        await twin.run()
    assert node.ready  # the first one is unaffected


async def test_identity_readable_by_others_is_refused(tmp_path: Path) -> None:
    dd = new_data_dir(tmp_path, "loose")
    os.chmod(dd.identity_path, 0o644)
    with pytest.raises(DataDirError, match="readable by others"):
        await Node(dd, test_config()).run()
    assert not dd.api_path.exists()


def test_each_start_step_comes_after_the_steps_it_needs(tmp_path: Path) -> None:
    steps = Node(new_data_dir(tmp_path, "a"), test_config())._start_order()
    started: list[str] = []
    for step in steps:
        missing = set(step.needs) - set(started)
        assert not missing, f"{step.name} starts before {sorted(missing)}"
        assert step.name not in started
        started.append(step.name)
    # the servers come last: nothing answers requests before every service runs
    assert [step.name for step in steps if step.drains] == started[-2:]
