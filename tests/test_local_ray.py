"""The tests' local Ray start retries only Ray's node-start timeout."""
import pytest
from local_ray import STARTS, start_local_ray

ray = pytest.importorskip("ray")


def test_a_node_start_timeout_is_tried_again_and_other_errors_are_not(monkeypatch):
    calls, shutdowns = [], []
    outcomes = iter([Exception("The current node timed out during startup."), None])

    def fake_init(**kwargs):
        calls.append(kwargs)
        error = next(outcomes)
        if error is not None:
            raise error

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(1))
    monkeypatch.setattr("local_ray.time.sleep", lambda s: None)
    start_local_ray(num_cpus=2)
    assert calls == [{"num_cpus": 2}] * 2 and shutdowns == [1]

    monkeypatch.setattr(ray, "init", lambda **kw: (_ for _ in ()).throw(ValueError("bad option")))
    with pytest.raises(ValueError, match="bad option"):
        start_local_ray(num_cpus=2)

    timeouts = []
    monkeypatch.setattr(ray, "init", lambda **kw: timeouts.append(1) or (_ for _ in ()).throw(
        Exception("The current node timed out during startup.")))
    with pytest.raises(Exception, match="timed out during startup"):
        start_local_ray()
    assert len(timeouts) == STARTS
