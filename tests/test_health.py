"""H2: .health answers within the health timeout even when the store hangs.

The memory: backend's test option delay=T makes every store call take T,
which is a store that accepts requests and does not answer in time.
"""
import json

import util


def test_h2_health_answers_while_the_store_hangs():
    m = util.Mount("memory:", opts=["delay=6s", "health_timeout=1s"]).start()
    m.allow_log(r"kvfs: WARN:.*health check")
    with open(m.p(".health"), "rb") as f:
        h = json.loads(f.read())
    # A report made after the store's answer would say "ok" (6 s later); an
    # "unresponsive" one can only come from the 1 s bound.
    assert h["status"] == "unresponsive", h
    assert h["latency_ms"] is None


def test_h2_health_is_ok_again_when_the_store_answers():
    m = util.Mount("memory:", opts=["delay=300ms", "health_timeout=3s"]).start()
    h = m.health()
    assert h["status"] == "ok", h
    assert h["latency_ms"] >= 300
