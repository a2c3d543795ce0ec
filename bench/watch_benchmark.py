"""The live traffic watch: does the cold share it publishes match the share
sent, and what does watching cost the clients and the helper?

Per trial, fresh tritonservers with ``--trace-config triton,file=...`` (in a
private folder) serve model-v1 warmed at group sizes 1..8 (batch 1). A client
sends a known mix in a seeded random order: 90% at warmed shapes, 10% at
group sizes 9..16, at a steady rate (open loop: each request is timed from
when it was due, so a stall counts for every request it delays).

Triton before 2.57 can crash while it traces under load (server issue
#7795): a run whose server dies is counted and run again on a fresh server,
up to ``ATTEMPTS`` times; the results say how often it happened.

- Truth: with ``watch_rate`` 1 and 10, a server each, the cold share read
  back from Triton's metrics port against the share sent (about 1,000
  observed requests each: the sampled share's own spread is then about one
  point).
- Cost: on one server per trial, blocks of the same load with the model's
  tracing off and at 1 in 10 and 1 in 100 (the helper's default), set
  through Triton's trace API between blocks, in rotating order: the client's
  p50 and p99 per condition against off on the same server (servers differ
  from each other by more than the effect), and the helper's CPU time over
  each block (its stub's utime + stime from /proc).
"""

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from typing import Dict, List, Optional

import numpy as np
import tritonclient.http as httpclient

from bench.measure import PROJECT_ROOT, copy_repository, helper_stub, percentile, results_header, run_record
from bench.report import table, write_results
from triton_warmup import HELPER_MODEL
from triton_warmup.client.states import warmth
from triton_warmup.client.warm import request_warmup, shape_arrays
from triton_warmup.embedded import EmbeddedTriton, free_port
from triton_warmup.helper.metrics import COLD_REQUESTS, REQUESTS_SEEN
from triton_warmup.helper.watch import CYCLE_S

MODEL = "model-v1"
WARM_GROUPS = range(1, 9)
COLD_GROUPS = range(9, 17)
COLD_SHARE = 0.10
# What the metrics port must show within this after the last request.
SETTLE_TIMEOUT_S = 30.0
# A sampled count is read after this many of the watch's cycles.
SETTLE_CYCLES = 2.5
PRIMING_REQUESTS = 50
# Requests per second of the steady load; a server that dies is replaced this often per run.
DEFAULT_RPS = 200
ATTEMPTS = 4
TRUTH_RATES = (1, 10)
COST_RATES = (0, 10, 100)
DEFAULT_RATE = 100
# The cost's blocks: requests per block, and rounds of one block per condition.
BLOCK_REQUESTS = 500
ROUNDS = 4
TRUTH_OBSERVATIONS = 1000
# Targets of the issue.
LATENCY_TARGET = 1.05
CPU_TARGET = 0.02
SHARE_POINTS_TARGET = 3.0


def helper_parameters(repository: pathlib.Path, **values: str) -> None:
    from google.protobuf import text_format  # noqa: PLC0415 - only here
    from tritonclient.grpc import model_config_pb2  # noqa: PLC0415

    path = repository / HELPER_MODEL / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    for key, value in values.items():
        config.parameters[key].string_value = value
    path.write_text(text_format.MessageToString(config))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    import os  # noqa: PLC0415

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _mix(requests: int, seed: int) -> List[int]:
    rng = np.random.default_rng(seed)
    cold = int(round(requests * COLD_SHARE))
    groups = list(rng.choice(list(WARM_GROUPS), requests - cold)) + list(rng.choice(list(COLD_GROUPS), cold))
    rng.shuffle(groups)
    return [int(group) for group in groups]


def _inputs(group: int):
    x = httpclient.InferInput("x", [1, group, 64], "FP32")
    x.set_data_from_numpy(np.zeros((1, group, 64), np.float32))
    mask = httpclient.InferInput("mask", [1, group], "INT64")
    mask.set_data_from_numpy(np.ones((1, group), np.int64))
    return [x, mask]


def _read_counts(server: EmbeddedTriton) -> Dict[str, float]:
    with urllib.request.urlopen(f"http://localhost:{server.metrics_port}/metrics", timeout=10) as response:
        figures = warmth(response.read().decode()).get((MODEL, "1"), {})
    return {"seen": figures.get(REQUESTS_SEEN, 0.0), "cold": figures.get(COLD_REQUESTS, 0.0)}


def _wait_for_tracing(client, rate: int) -> None:
    """Until the watch has turned tracing on for the model (within a cycle of its READY)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while client.get_trace_settings(MODEL).get("trace_rate") != str(rate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the watch did not turn tracing on for {MODEL} within {SETTLE_TIMEOUT_S} s")
        time.sleep(0.1)


def _settled_counts(server: EmbeddedTriton, expected_seen: Optional[float]) -> Dict[str, float]:
    """The counts once the watch has read every trace so far: until
    ``expected_seen`` where it is known (watch_rate 1), else after
    ``SETTLE_CYCLES`` cycles."""
    if expected_seen is None:
        time.sleep(SETTLE_CYCLES * CYCLE_S)
        return _read_counts(server)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    counts = _read_counts(server)
    while counts["seen"] < expected_seen and time.monotonic() < deadline:
        time.sleep(0.2)
        counts = _read_counts(server)
    return counts


class ServerDied(RuntimeError):
    """The server died during a run (its log's last lines in the message)."""


def one_run(workdir: pathlib.Path, rate: int, requests: int, seed: int, rps: float, measure=None) -> Dict:
    """``one_server``, again on a fresh server when one dies; the run says how many died."""
    deaths = []
    for attempt in range(ATTEMPTS):
        try:
            run = one_server(workdir / f"attempt-{attempt}", rate, requests, seed, rps, measure)
        except ServerDied as died:
            deaths.append(str(died))
            print(f"  the server died (watch_rate {rate}, attempt {attempt + 1}): {str(died).splitlines()[0]}",
                  flush=True)
            continue
        run["servers_died"] = len(deaths)
        run["deaths"] = deaths
        return run
    raise RuntimeError(f"{ATTEMPTS} servers in a row died at watch_rate {rate}: {deaths[-1]}")


def one_server(workdir: pathlib.Path, rate: int, requests: int, seed: int, rps: float = DEFAULT_RPS,
               measure=None) -> Dict:
    """A fresh server with the helper's ``watch_rate`` ``rate``, measured by
    ``measure`` (the truth's ``_measure`` by default)."""
    repository = copy_repository(workdir / "model_repository")
    for name in list(path.name for path in repository.iterdir()):
        if name not in (MODEL, HELPER_MODEL):
            shutil.rmtree(repository / name)
    helper_parameters(repository, watch_rate=str(rate))
    traces = workdir / "traces"
    traces.mkdir(mode=0o700)
    server = EmbeddedTriton(repository, workdir, http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port(), log_verbose=0,
                            extra_args=[f"--trace-config=triton,file={traces / 'trace.json'}"])
    with server:
        try:
            return (measure or _measure)(server, rate, requests, seed, rps)
        except Exception as error:  # noqa: BLE001 - a dead server is a finding, anything else a bug
            # A dying server stops answering before it has printed its stack and exited.
            server.wait(10)
            if server.is_running() and "Signal (11)" not in server.log_text():
                raise
            crash = [line for line in server.log_text().splitlines() if "Signal (" in line]
            raise ServerDied(f"{(crash or [repr(error)])[0]}; log {server.log_path}") from None


def _prepared(client, rate: int, requests: int, seed: int):
    """Warm the model, wait for the watch, send the priming requests;
    the mix and its inputs."""
    request_warmup(client, "http", shape_arrays([MODEL], WARM_GROUPS.start, WARM_GROUPS.stop - 1, batch_sizes=[1]))
    if rate:
        _wait_for_tracing(client, rate)
    groups = _mix(requests, seed)
    prepared = {group: _inputs(group) for group in set(groups)}
    for group in groups[:PRIMING_REQUESTS]:  # the client's own first requests are not the server's cost
        client.infer(MODEL, prepared[group])
    return groups, prepared


def _steady(client, groups: List[int], prepared, rps: float) -> List[float]:
    """Send ``groups`` at ``rps``; each latency from when its request was due, in ms."""
    started, latencies = time.perf_counter(), []
    for index, group in enumerate(groups):
        due = started + index / rps
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        client.infer(MODEL, prepared[group])
        latencies.append((time.perf_counter() - due) * 1000)
    return latencies


def _measure(server: EmbeddedTriton, rate: int, requests: int, seed: int, rps: float) -> Dict:
    with httpclient.InferenceServerClient(server.http_url, network_timeout=600) as client:
        groups, prepared = _prepared(client, rate, requests, seed)
        before = _settled_counts(server, PRIMING_REQUESTS if rate == 1 else None)
        stub = helper_stub(server.pid)
        cpu_before, started = _cpu_seconds(stub), time.perf_counter()
        latencies = _steady(client, groups, prepared, rps)
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds(stub) - cpu_before
    counts = _settled_counts(server, before["seen"] + requests if rate == 1 else None)
    seen, cold = counts["seen"] - before["seen"], counts["cold"] - before["cold"]
    sent_cold = sum(1 for group in groups if group in COLD_GROUPS)
    return {
        "watch_rate": rate,
        "requests": requests,
        "sent_cold_share": sent_cold / requests,
        "seen": seen,
        "cold": cold,
        "measured_cold_share": cold / seen if seen else None,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "seconds": elapsed,
        "helper_cpu_s": cpu,
        "helper_cpu_share": cpu / elapsed,
        "requests_per_s": requests / elapsed,
    }


def _trace_setting(rate: int) -> Dict:
    """The model's own trace setting for a block: off, or the watch's at ``rate``."""
    if rate == 0:
        return {"trace_level": ["OFF"]}
    return {"trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": str(rate), "log_frequency": "1"}


def cost_blocks(rates, block_requests: int, rounds: int):
    """A ``measure`` for ``one_server``: rounds of one block per rate, each
    round's order rotated, the model's tracing switched between blocks."""

    def measure(server: EmbeddedTriton, rate: int, requests: int, seed: int, rps: float) -> Dict:
        by_rate = {value: {"latencies": [], "cpu_s": 0.0, "seconds": 0.0} for value in rates}
        with httpclient.InferenceServerClient(server.http_url, network_timeout=600) as client:
            groups, prepared = _prepared(client, rate, block_requests, seed)
            stub = helper_stub(server.pid)
            for round_index in range(rounds):
                order = rates[round_index % len(rates):] + rates[:round_index % len(rates)]
                for value in order:
                    client.update_trace_settings(MODEL, _trace_setting(value))
                    cpu_before, started = _cpu_seconds(stub), time.perf_counter()
                    by_rate[value]["latencies"] += _steady(client, groups, prepared, rps)
                    by_rate[value]["seconds"] += time.perf_counter() - started
                    # The watch reads the block's traces within two cycles: that CPU is the
                    # block's, as a share of the time its traffic flowed.
                    time.sleep(SETTLE_CYCLES * CYCLE_S)
                    by_rate[value]["cpu_s"] += _cpu_seconds(stub) - cpu_before
        return {
            "watch_rate": rate,
            "conditions": {
                str(value): {
                    "requests": len(figures["latencies"]),
                    "p50_ms": percentile(figures["latencies"], 50),
                    "p99_ms": percentile(figures["latencies"], 99),
                    "helper_cpu_share": figures["cpu_s"] / figures["seconds"],
                }
                for value, figures in by_rate.items()
            },
        }

    return measure


def summarize(results: Dict) -> Dict:
    """Per rate: the median over trials of p50 and p99 against off on the
    same server, and of the helper's CPU share; the truth's points off."""
    rates = sorted({rate for run in results["cost"] for rate in run["conditions"]}, key=int)
    summary = {"cost": {}, "truth": {}}
    for rate in rates:
        per_trial = [run["conditions"] for run in results["cost"]]
        summary["cost"][rate] = {
            "p50_ratio": statistics.median(c[rate]["p50_ms"] / c["0"]["p50_ms"] for c in per_trial),
            "p99_ratio": statistics.median(c[rate]["p99_ms"] / c["0"]["p99_ms"] for c in per_trial),
            "p50_ms": statistics.median(c[rate]["p50_ms"] for c in per_trial),
            "p99_ms": statistics.median(c[rate]["p99_ms"] for c in per_trial),
            "helper_cpu_share": statistics.median(c[rate]["helper_cpu_share"] for c in per_trial),
        }
    for rate in sorted({run["watch_rate"] for run in results["truth"]}):
        off = [abs(run["measured_cold_share"] - run["sent_cold_share"]) * 100
               for run in results["truth"] if run["watch_rate"] == rate]
        summary["truth"][str(rate)] = {"worst_points_off": max(off), "trials": len(off)}
    return summary


def markdown(results: Dict) -> str:
    parts = results_header("The live traffic watch: truth and cost", results)
    settings, summary = results["settings"], results["summary"]
    parts.append(
        f"\n{MODEL} warmed at group sizes {WARM_GROUPS.start}..{WARM_GROUPS.stop - 1}; "
        f"{COLD_SHARE:.0%} of the requests at group sizes {COLD_GROUPS.start}..{COLD_GROUPS.stop - 1} (cold), in a "
        f"seeded random order, at {settings['rps']:.0f} requests/s, each timed from when it was due; "
        f"{settings['trials']} trials.\n"
    )
    runs = results["truth"] + results["cost"]
    died = sum(run["servers_died"] for run in runs)
    parts.append(
        f"\nServers that died while traced (Triton before 2.57, server issue #7795) and were replaced: {died} "
        f"in {len(runs) + died} server starts"
        + (": " + "; ".join(sorted({death.split(';')[0] for run in runs for death in run['deaths']})) if died else "")
        + ".\n"
    )
    parts.append(f"\n## Truth: the cold share on the metrics port against the share sent\n\nA fresh server per "
                 f"run, about {settings['truth_observations']} observed requests each. Targets: exact at 1, within "
                 f"{SHARE_POINTS_TARGET:.0f} points at 10.\n")
    rows = []
    for run in results["truth"]:
        measured = run["measured_cold_share"]
        rows.append((run["watch_rate"], run["trial"] + 1, run["requests"], f"{run['seen']:.0f}", f"{run['cold']:.0f}",
                     f"{run['sent_cold_share']:.2%}", "-" if measured is None else f"{measured:.2%}",
                     "-" if measured is None else f"{(measured - run['sent_cold_share']) * 100:+.2f}"))
    parts.append(table(("watch_rate", "trial", "sent", "observed", "cold", "sent cold share", "measured",
                        "points off"), rows))
    parts.append(
        f"\n## Cost: tracing off against on, in blocks on one server\n\nPer trial one server; {settings['rounds']} "
        f"rounds of one block of {settings['block_requests']} requests per condition, the model's trace setting "
        f"switched between blocks, the order rotated per round. Targets at the default rate "
        f"({DEFAULT_RATE}): p50 and p99 within {LATENCY_TARGET}x of off, the helper under {CPU_TARGET:.0%} of "
        f"one core.\n"
    )
    rows = []
    for run in results["cost"]:
        for rate, figures in run["conditions"].items():
            rows.append((run["trial"] + 1, rate, f"{figures['p50_ms']:.3f}", f"{figures['p99_ms']:.3f}",
                         f"{figures['helper_cpu_share']:.2%}"))
    parts.append(table(("trial", "watch_rate", "p50 ms", "p99 ms", "helper CPU, share of a core"), rows))
    rows = []
    for rate, figures in summary["cost"].items():
        rows.append((rate + (" (default)" if int(rate) == DEFAULT_RATE else ""), f"{figures['p50_ms']:.3f}",
                     f"{figures['p50_ratio']:.3f}x", f"{figures['p99_ms']:.3f}", f"{figures['p99_ratio']:.3f}x",
                     f"{figures['helper_cpu_share']:.2%}"))
    parts.append("\nMedians over the trials; each ratio is against off on the same server.\n")
    parts.append(table(("watch_rate", "p50 ms", "p50 / off", "p99 ms", "p99 / off", "helper CPU"), rows))
    return "\n".join(parts) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="Trials. Default is 3.")
    parser.add_argument("--rps", type=float, default=DEFAULT_RPS,
                        help=f"Requests per second of the steady load. Default is {DEFAULT_RPS}.")
    parser.add_argument("--truth-rates", type=int, nargs="+", default=list(TRUTH_RATES),
                        help=f"watch_rate values whose cold share is checked. Default is "
                        f"{' '.join(map(str, TRUTH_RATES))}.")
    parser.add_argument("--truth-observations", type=int, default=TRUTH_OBSERVATIONS,
                        help=f"Observed requests per truth run (rate x this are sent). Default is {TRUTH_OBSERVATIONS}.")
    parser.add_argument("--cost-rates", type=int, nargs="+", default=list(COST_RATES),
                        help=f"Trace rates of the cost's blocks; 0 (off) is the reference. Default is "
                        f"{' '.join(map(str, COST_RATES))}.")
    parser.add_argument("--block-requests", type=int, default=BLOCK_REQUESTS,
                        help=f"Requests per cost block. Default is {BLOCK_REQUESTS}.")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"Rounds of cost blocks. Default is {ROUNDS}.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    if 0 not in args.cost_rates:
        parser.error("--cost-rates needs 0: the cost is measured against tracing off")
    cost_rates = tuple(str(rate) for rate in args.cost_rates)
    results = {**run_record("bench.watch_benchmark"),
               "settings": {"trials": args.trials, "rps": args.rps, "truth_observations": args.truth_observations,
                            "block_requests": args.block_requests, "rounds": args.rounds},
               "truth": [], "cost": []}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="watch-benchmark-"))
    try:
        for trial in range(args.trials):
            for rate in args.truth_rates:
                requests = args.truth_observations * rate
                run = one_run(workdir / f"truth-{trial}-{rate}", rate, requests, trial, args.rps)
                run["trial"] = trial
                results["truth"].append(run)
                print(f"trial {trial + 1}, watch_rate {rate}: sent {run['sent_cold_share']:.2%} cold, measured "
                      f"{run['measured_cold_share']:.2%} of {run['seen']:.0f} observed", flush=True)
            # The helper's own rate is the largest: the blocks set the model's rate themselves.
            run = one_run(workdir / f"cost-{trial}", max(args.cost_rates), args.block_requests, 100 + trial,
                          args.rps, cost_blocks([int(rate) for rate in cost_rates], args.block_requests, args.rounds))
            run["trial"] = trial
            results["cost"].append(run)
            print(f"trial {trial + 1}, cost: " + ", ".join(
                f"{rate}: p50 {figures['p50_ms']:.3f} ms, p99 {figures['p99_ms']:.3f} ms, helper "
                f"{figures['helper_cpu_share']:.2%}" for rate, figures in run["conditions"].items()), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["summary"] = summarize(results)
    write_results(args.output_dir, "watch_benchmark", results, markdown(results))
    print(markdown(results).split("## Cost")[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
