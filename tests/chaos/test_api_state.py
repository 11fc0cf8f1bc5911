"""The proxy API as a state machine: any sequence of requests keeps it equal to a simple model.

Hypothesis drives random sequences of create / update / delete / toxic / reset requests
(valid and invalid) against a real ProxyServer and checks every answer's status and the
whole ``GET /proxies`` document against a dictionary model after each step.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stoic.chaos import ApiError, ProxyServer

NAMES = st.sampled_from(["a", "b", "c"])
TOXIC_NAMES = st.sampled_from(["t1", "t2"])
TYPES = {
    "latency": st.fixed_dictionaries({"latency": st.integers(0, 50), "jitter": st.integers(0, 5)}),
    "bandwidth": st.fixed_dictionaries({"rate": st.integers(0, 1000)}),
    "limit_data": st.fixed_dictionaries({"bytes": st.integers(0, 10_000)}),
    "slicer": st.fixed_dictionaries({"average_size": st.integers(0, 100),
                                     "size_variation": st.integers(0, 10),
                                     "delay": st.integers(0, 100)}),
}
DEFAULTS = {
    "latency": {"latency": 0, "jitter": 0}, "bandwidth": {"rate": 0}, "limit_data": {"bytes": 0},
    "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},
}


def status_of(call: Any) -> int:
    try:
        call()
    except ApiError as exc:
        return exc.status
    return 200


class ProxyApi(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.server = ProxyServer(seed=0).start()
        # model: name -> {"enabled": bool, "toxics": {name: toxic json}}
        self.model: dict[str, dict[str, Any]] = {}

    def teardown(self) -> None:
        self.server.stop()

    @rule(name=NAMES, enabled=st.booleans())
    def create(self, name: str, enabled: bool) -> None:
        status = status_of(lambda: self.server.create(name, "127.0.0.1:9", enabled=enabled))
        if name in self.model:
            assert status == 409
        else:
            assert status == 200
            self.model[name] = {"enabled": enabled, "toxics": {}}

    @rule(name=NAMES, enabled=st.booleans())
    def set_enabled(self, name: str, enabled: bool) -> None:
        action = self.server.enable if enabled else self.server.disable
        status = status_of(lambda: action(name))
        assert status == (200 if name in self.model else 404)
        if name in self.model:
            self.model[name]["enabled"] = enabled

    @rule(name=NAMES)
    def delete(self, name: str) -> None:
        status = status_of(lambda: self.server.delete(name))
        assert status == (200 if name in self.model else 404)
        self.model.pop(name, None)

    @rule(proxy=NAMES, toxic=TOXIC_NAMES, data=st.data(), kind=st.sampled_from(sorted(TYPES)),
          stream=st.sampled_from(["upstream", "downstream"]),
          toxicity=st.sampled_from([0.0, 0.5, 1.0]))
    def add_toxic(self, proxy: str, toxic: str, data: st.DataObject, kind: str, stream: str,
                  toxicity: float) -> None:
        attributes = data.draw(TYPES[kind])
        status = status_of(lambda: self.server.add_toxic(
            proxy, kind, name=toxic, stream=stream, toxicity=toxicity, **attributes))
        if proxy not in self.model:
            assert status == 404
        elif toxic in self.model[proxy]["toxics"]:
            assert status == 409
        else:
            assert status == 200
            self.model[proxy]["toxics"][toxic] = {
                "name": toxic, "type": kind, "stream": stream, "toxicity": toxicity,
                "attributes": {**DEFAULTS[kind], **attributes}}

    @rule(proxy=NAMES, toxic=TOXIC_NAMES, toxicity=st.sampled_from([0.0, 0.25, 1.0]))
    def update_toxic(self, proxy: str, toxic: str, toxicity: float) -> None:
        status = status_of(lambda: self.server.update_toxic(proxy, toxic, toxicity=toxicity))
        if proxy not in self.model or toxic not in self.model[proxy]["toxics"]:
            assert status == 404
        else:
            assert status == 200
            self.model[proxy]["toxics"][toxic]["toxicity"] = toxicity

    @rule(proxy=NAMES, toxic=TOXIC_NAMES)
    def remove_toxic(self, proxy: str, toxic: str) -> None:
        status = status_of(lambda: self.server.remove_toxic(proxy, toxic))
        if proxy not in self.model or toxic not in self.model[proxy]["toxics"]:
            assert status == 404
        else:
            assert status == 200
            del self.model[proxy]["toxics"][toxic]

    @rule(proxy=NAMES, kind=st.sampled_from(["nope", "", "LATENCY"]))
    def add_bad_toxic(self, proxy: str, kind: str) -> None:
        status = status_of(lambda: self.server.add_toxic(proxy, kind))
        assert status == (400 if proxy in self.model else 404)

    @rule(proxy=NAMES, kind=st.sampled_from(sorted(TYPES)),
          value=st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31)))
    def add_out_of_range_toxic(self, proxy: str, kind: str, value: int) -> None:
        attribute = next(iter(DEFAULTS[kind]))
        status = status_of(lambda: self.server.add_toxic(proxy, kind, **{attribute: value}))
        assert status == (400 if proxy in self.model else 404)

    @precondition(lambda self: bool(self.model))
    @rule()
    def reset(self) -> None:
        self.server.reset()
        for proxy in self.model.values():
            proxy["enabled"] = True
            proxy["toxics"] = {}

    @invariant()
    def matches_the_model(self) -> None:
        actual = self.server.proxies()
        assert set(actual) == set(self.model)
        for name, proxy in actual.items():
            expected = self.model[name]
            assert proxy["enabled"] == expected["enabled"]
            assert proxy["toxics"] == list(expected["toxics"].values())


ProxyApi.TestCase.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestProxyApiStateMachine = ProxyApi.TestCase
