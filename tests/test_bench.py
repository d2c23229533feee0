"""The benchmark harness's bookkeeping (its timings are never asserted: machines are noisy)."""

import pytest

from polyak.bench import harness, spread
from polyak.bench.bandwidth import BYTES_PER_ELEMENT, StreamProbe
from polyak.bench.workloads import WORKLOADS, bytes_moved


class _Probe:
    """A stand-in for the stream probe: records its turns, converts time as a 1 GB/s probe would."""

    def __init__(self, calls):
        self.calls = calls

    def __call__(self):
        self.calls.append(harness.STREAM)

    def bandwidth(self, seconds):
        return 1e9


def _recording(name, calls):
    return lambda workload, device: (lambda: calls.append(name))


def test_every_contender_runs_each_repeat_in_a_rotating_order(monkeypatch):
    calls = []
    names = ["a", "b", "c"]
    monkeypatch.setattr(harness, "CONTENDERS", {n: _recording(n, calls) for n in names})
    result = harness.run_workload(WORKLOADS["W2"], names, repeats=4, warmup=2, probe=_Probe(calls), log=None)

    warmups, timed = calls[:2 * len(names)], calls[2 * len(names):]
    assert warmups == ["a", "a", "b", "b", "c", "c"]
    rounds = [timed[i:i + 4] for i in range(0, len(timed), 4)]
    assert [r[0] for r in rounds] == [harness.STREAM, "a", "b", "c"]  # each takes the lead in turn
    assert all(sorted(r) == sorted([harness.STREAM, *names]) for r in rounds)
    assert set(result["results"]) == set(names)  # the probe is not a contender in the table
    assert result["bandwidth_gb_s"] == 1.0
    assert result["floor_ms"] == pytest.approx(bytes_moved(WORKLOADS["W2"]) / 1e9 * 1e3)


def test_stream_probe_moves_what_it_claims():
    probe = StreamProbe(n=1000)
    before = probe.a.copy()
    probe()
    assert probe.bytes_per_call == BYTES_PER_ELEMENT * 1000
    assert (probe.a > before).all()  # it really updates a in place
    assert probe.bandwidth(0.5) == 2 * probe.bytes_per_call


def test_keras_is_timed_alone_after_the_interleaved_rounds(monkeypatch):
    calls = []
    names = ["a", "keras-numpy", "b"]
    monkeypatch.setattr(harness, "CONTENDERS", {n: _recording(n, calls) for n in names})
    harness.run_workload(WORKLOADS["W2"], names, repeats=3, warmup=0, probe=_Probe(calls), log=None)
    assert "keras-numpy" not in calls[:9] and calls[9:] == ["keras-numpy"] * 3


def test_host_only_contenders_decline_a_gpu():
    from polyak.bench.contenders import CONTENDERS, Unavailable

    for name in ("polyak-numpy", "keras-numpy"):
        with pytest.raises(Unavailable, match="CPU only"):
            CONTENDERS[name](WORKLOADS["W2"], "cuda")


def test_bench_on_cuda_without_a_gpu_says_so(monkeypatch, capsys):
    from polyak.bench import __main__ as bench_main
    from polyak.bench import command

    monkeypatch.setattr(command, "_cuda_available", lambda: False)
    assert bench_main.main(["--device", "cuda"]) == 2
    assert "polyak bench: error: --device cuda needs PyTorch with a CUDA device" in capsys.readouterr().err


def test_a_spread_above_the_threshold_is_noise_and_one_slow_repeat_is_not():
    steady = [0.020] * 14 + [0.100]  # one repeat hit by the load: neither quartile moves
    bimodal = [0.0199, 0.0201, 0.1638, 0.1700, 0.1800]  # a short run, half of it on a busy machine
    assert spread.spread(steady) == 0.0
    assert spread.spread(bimodal) == pytest.approx((0.17 - 0.0201) / 0.1638)
    assert spread.noisy({"steady": steady, "bimodal": bimodal}) == {"bimodal": spread.spread(bimodal)}
    assert spread.noisy({"mild": [1.0, 1.05, 1.1, 1.15, 1.2]}) == {}  # IQR 0.1 of 1.1: 9%
    assert spread.noisy({"mild": [1.0, 1.05, 1.1, 1.15, 1.2]}, threshold=0.05) == {"mild": pytest.approx(0.1 / 1.1)}
    assert spread.spread([0.5]) == 0.0


def test_the_table_warns_of_a_noisy_contender_by_name_and_spread():
    row = {"ms": 163.76, "vs_torch_fused": 1.0, "vs_floor": 8.0, "min_ms": 19.9, "max_ms": 180.0, "spread": 0.92}
    result = {"workload": "W2", "title": "2000 tensors", "tensors": 2000, "parameters": 2_048_000,
              "floor_ms": 1.0, "bandwidth_gb_s": 30.0, "unavailable": {},
              "results": {"torch-fused": row, "polyak-numpy": {**row, "spread": 0.01}},
              "noisy": {"torch-fused": 0.92}}
    warnings = [line for line in harness.format_table(result).splitlines() if "warning" in line]
    assert warnings == ["  warning: torch-fused: its repeats ranged over 19.90-180.00 ms, an interquartile range "
                        "of 92% of the median (over 20%): the median is noise; rerun with more --repeats or on a "
                        "quieter machine"]


def test_run_workload_records_each_contenders_spread(monkeypatch):
    calls = []
    monkeypatch.setattr(harness, "CONTENDERS", {"a": _recording("a", calls)})
    result = harness.run_workload(WORKLOADS["W2"], ["a"], repeats=3, warmup=0, probe=_Probe(calls), log=None)
    row = result["results"]["a"]
    assert row["min_ms"] <= row["ms"] <= row["max_ms"] and row["spread"] >= 0
    assert set(result["noisy"]) <= {"a"}
