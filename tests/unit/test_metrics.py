"""A node's metrics: the instruments services make for themselves (``overlay_node.metrics.instrument``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from overlay_node.metrics import Metrics, instrument


def test_an_instrument_is_made_once_per_metrics() -> None:
    metrics = Metrics()
    counter = instrument(metrics, Counter, "overlay_test_things", "Things", ["kind"])
    # a service built again on the same metrics gets the same instrument (the registry refuses a second one)
    assert instrument(metrics, Counter, "overlay_test_things", "Things", ["kind"]) is counter
    counter.labels("a").inc(2)
    gauge = instrument(metrics, Gauge, "overlay_test_level", "Level", [])
    gauge.set(7)
    assert metrics.registry.get_sample_value("overlay_test_things_total", {"kind": "a"}) == 2.0
    assert metrics.registry.get_sample_value("overlay_test_level") == 7.0
    assert b"overlay_test_things_total" in metrics.render()


def test_nodes_in_one_process_do_not_share_instruments() -> None:
    one, two = Metrics(), Metrics()
    first = instrument(one, Counter, "overlay_test_shared", "Shared", [])
    second = instrument(two, Counter, "overlay_test_shared", "Shared", [])
    assert first is not second
    first.inc()
    assert one.registry.get_sample_value("overlay_test_shared_total") == 1.0
    assert two.registry.get_sample_value("overlay_test_shared_total") == 0.0
