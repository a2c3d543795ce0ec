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

- Truth: with ``watch_rate`` 1 and 10, the cold share read back from
  Triton's metrics port against the share sent.
- Cost: the same load with ``watch_rate`` 0 (off), 10 and 100 (the
  helper's default), on servers started in rotating order: the client's p50
  and p99, and the helper's CPU time over the load (its stub's utime +
  stime from /proc).
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


def one_run(workdir: pathlib.Path, rate: int, requests: int, seed: int, rps: float) -> Dict:
    """``one_server``, again on a fresh server when one dies; the run says how many died."""
    deaths = []
    for attempt in range(ATTEMPTS):
        try:
            run = one_server(workdir / f"attempt-{attempt}", rate, requests, seed, rps)
        except ServerDied as died:
            deaths.append(str(died))
            print(f"  the server died (watch_rate {rate}, attempt {attempt + 1}): {str(died).splitlines()[0]}",
                  flush=True)
            continue
        run["servers_died"] = len(deaths)
        run["deaths"] = deaths
        return run
    raise RuntimeError(f"{ATTEMPTS} servers in a row died at watch_rate {rate}: {deaths[-1]}")


def one_server(workdir: pathlib.Path, rate: int, requests: int, seed: int, rps: float = DEFAULT_RPS) -> Dict:
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
            return _measure(server, rate, requests, seed, rps)
        except Exception as error:  # noqa: BLE001 - a dead server is a finding, anything else a bug
            # A dying server stops answering before it has printed its stack and exited.
            server.wait(10)
            if server.is_running() and "Signal (11)" not in server.log_text():
                raise
            crash = [line for line in server.log_text().splitlines() if "Signal (" in line]
            raise ServerDied(f"{(crash or [repr(error)])[0]}; log {server.log_path}") from None


def _measure(server: EmbeddedTriton, rate: int, requests: int, seed: int, rps: float) -> Dict:
    with httpclient.InferenceServerClient(server.http_url, network_timeout=600) as client:
        request_warmup(client, "http", shape_arrays([MODEL], WARM_GROUPS.start, WARM_GROUPS.stop - 1,
                                                     batch_sizes=[1]))
        if rate:
            _wait_for_tracing(client, rate)
        groups = _mix(requests, seed)
        prepared = {group: _inputs(group) for group in set(groups)}
        for group in groups[:PRIMING_REQUESTS]:  # the client's own first requests are not the server's cost
            client.infer(MODEL, prepared[group])
        before = _settled_counts(server, PRIMING_REQUESTS if rate == 1 else None)
        stub = helper_stub(server.pid)
        cpu_before, started = _cpu_seconds(stub), time.perf_counter()
        latencies = []
        for index, group in enumerate(groups):
            due = started + index / rps
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            client.infer(MODEL, prepared[group])
            latencies.append((time.perf_counter() - due) * 1000)
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


def markdown(results: Dict) -> str:
    parts = results_header("The live traffic watch: truth and cost", results)
    settings = results["settings"]
    parts.append(
        f"\n{MODEL} warmed at group sizes {WARM_GROUPS.start}..{WARM_GROUPS.stop - 1}; {settings['requests']} "
        f"requests per server, {COLD_SHARE:.0%} of them at group sizes {COLD_GROUPS.start}..{COLD_GROUPS.stop - 1} "
        f"(cold), in a seeded random order, at {settings['rps']:.0f} requests/s (each timed from when it was due); "
        f"a fresh server per run, {settings['trials']} trials.\n"
    )
    runs = results["truth"] + results["cost"]
    died = sum(run["servers_died"] for run in runs)
    parts.append(
        f"\nServers that died while traced (Triton before 2.57, server issue #7795), and were replaced: {died} "
        f"in {len(runs) + died} server starts"
        + (": " + "; ".join(sorted({death.split(';')[0] for run in runs for death in run['deaths']})) if died else "")
        + ".\n"
    )
    parts.append("\n## Truth: the cold share on the metrics port against the share sent\n")
    rows = []
    for run in results["truth"]:
        measured = run["measured_cold_share"]
        rows.append((run["watch_rate"], run["trial"] + 1, f"{run['seen']:.0f}", f"{run['cold']:.0f}",
                     f"{run['sent_cold_share']:.2%}", "-" if measured is None else f"{measured:.2%}",
                     "-" if measured is None else f"{(measured - run['sent_cold_share']) * 100:+.2f}"))
    parts.append(table(("watch_rate", "trial", "observed", "cold", "sent cold share", "measured", "points off"), rows))
    rates = [rate for rate in results["summary"] if rate != "0"]
    parts.append(f"\n## Cost: the same load with the watch off (watch_rate 0) and on ({', '.join(rates)})\n")
    rows = []
    for run in results["cost"]:
        rows.append((run["trial"] + 1, run["watch_rate"], f"{run['p50_ms']:.3f}", f"{run['p99_ms']:.3f}",
                     f"{run['helper_cpu_share']:.2%}"))
    parts.append(table(("trial", "watch_rate", "p50 ms", "p99 ms", "helper CPU, share of a core"), rows))
    rows = []
    for rate, figures in results["summary"].items():
        rows.append((rate + (" (default)" if int(rate) == DEFAULT_RATE else ""), f"{figures['p50_ms']:.3f}",
                     f"{figures['p50_ratio']:.3f}x", f"{figures['p99_ms']:.3f}", f"{figures['p99_ratio']:.3f}x",
                     f"{figures['helper_cpu_share']:.2%}"))
    parts.append(f"\nMedians of the trials. Targets at the default rate: p50 and p99 within {LATENCY_TARGET}x of "
                 f"off, the helper under {CPU_TARGET:.0%} of one core.\n")
    parts.append(table(("watch_rate", "p50 ms", "p50 / off", "p99 ms", "p99 / off", "helper CPU"), rows))
    return "\n".join(parts) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="Fresh servers per setting. Default is 3.")
    parser.add_argument("--requests", type=int, default=3000, help="Requests per server. Default is 3000.")
    parser.add_argument("--rps", type=float, default=DEFAULT_RPS,
                        help=f"Requests per second of the steady load. Default is {DEFAULT_RPS}.")
    parser.add_argument("--truth-rates", type=int, nargs="+", default=list(TRUTH_RATES),
                        help=f"watch_rate values whose cold share is checked. Default is {' '.join(map(str, TRUTH_RATES))}.")
    parser.add_argument("--cost-rates", type=int, nargs="+", default=list(COST_RATES),
                        help=f"watch_rate values whose cost is measured; 0 (off) is the reference. Default is "
                        f"{' '.join(map(str, COST_RATES))}.")
    parser.add_argument("--output-dir", type=pathlib.Path, default=PROJECT_ROOT / "bench" / "results",
                        help="Where the results go. Default is bench/results.")
    args = parser.parse_args(argv)
    if 0 not in args.cost_rates:
        parser.error("--cost-rates needs 0: the cost is measured against the watch off")
    cost_rates = tuple(args.cost_rates)
    results = {**run_record("bench.watch_benchmark"),
               "settings": {"trials": args.trials, "requests": args.requests, "rps": args.rps},
               "truth": [], "cost": []}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="watch-benchmark-"))
    try:
        for trial in range(args.trials):
            for rate in args.truth_rates:
                run = one_run(workdir / f"truth-{trial}-{rate}", rate, args.requests, trial, args.rps)
                run["trial"] = trial
                results["truth"].append(run)
                print(f"trial {trial + 1}, watch_rate {rate}: sent {run['sent_cold_share']:.2%} cold, measured "
                      f"{run['measured_cold_share']:.2%} of {run['seen']:.0f} observed", flush=True)
            rotated = cost_rates[trial % len(cost_rates):] + cost_rates[:trial % len(cost_rates)]
            for rate in rotated:
                run = one_run(workdir / f"cost-{trial}-{rate}", rate, args.requests, 100 + trial, args.rps)
                run["trial"] = trial
                results["cost"].append(run)
                print(f"trial {trial + 1}, watch_rate {rate}: p50 {run['p50_ms']:.3f} ms, p99 {run['p99_ms']:.3f} ms, "
                      f"helper CPU {run['helper_cpu_share']:.2%}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def median(rate, key):
        return statistics.median(run[key] for run in results["cost"] if run["watch_rate"] == rate)

    results["summary"] = {
        str(rate): {
            "p50_ms": median(rate, "p50_ms"),
            "p99_ms": median(rate, "p99_ms"),
            "helper_cpu_share": median(rate, "helper_cpu_share"),
            "p50_ratio": median(rate, "p50_ms") / median(0, "p50_ms"),
            "p99_ratio": median(rate, "p99_ms") / median(0, "p99_ms"),
        }
        for rate in cost_rates
    }
    write_results(args.output_dir, "watch_benchmark", results, markdown(results))
    print(markdown(results).split("## Cost")[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
