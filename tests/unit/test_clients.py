"""The clients' own logic: usage errors, unreachable servers, output formats."""

import io
import json
import pathlib
import socket

import pytest
from tritonclient.utils import InferenceServerException

from triton_warmup.client import flags as client_flags
from triton_warmup.client import states as query_model_states
from triton_warmup.client import live_view
from triton_warmup.client import warm as warmup_models
from triton_warmup.embedded import serve
from triton_warmup.report import ModelEntry, Status

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
MAINS = {"triton-warmup": warmup_models.main, "triton-warmup-states": query_model_states.main, "triton-warmup-serve": serve.main}


def unused_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("script", ["triton-warmup", "triton-warmup-states"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unreachable_server_exits_3(run_cli, script, protocol):
    result = run_cli(MAINS[script], "-i", protocol, "-u", f"localhost:{unused_port()}")
    assert result.returncode == 3, result.stderr
    assert "FAILED" in result.stderr


# The same mistake as flags and as a plan file: exit 2 and the validator's words.
SAME_MISTAKES = [
    (["--batch-sizes", "0"], {"defaults": {"group_size_max": 4, "batch_sizes": [0]}}, "must be at least 1, got 0"),
    (
        ["--group-size-min", "5", "--group-size-max", "2"],
        {"defaults": {"group_size_min": 5, "group_size_max": 2}},
        "group_size_min 5 is greater than group_size_max 2",
    ),
]


@pytest.mark.parametrize("flags, document, words", SAME_MISTAKES)
def test_the_same_mistake_exits_2_as_flags_and_as_a_plan_file(run_cli, tmp_path, flags, document, words):
    # No server listens: both are refused before any connection.
    url = f"localhost:{unused_port()}"
    as_flags = run_cli(MAINS["triton-warmup"], "-u", url, "--models", "model-v1", *flags)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({**document, "models": {"model-v1": {}}}))
    as_plan = run_cli(MAINS["triton-warmup"], "-u", url, "--plan", str(plan))
    for result in (as_flags, as_plan):
        assert result.returncode == 2, result.stderr
        assert words in result.stderr
        # One line: the reason, not argparse's usage text in front of it.
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_feature_dims_must_match_models_exits_2(run_cli):
    result = run_cli(MAINS["triton-warmup"], "--models", "a", "b", "--feature-dims", "64")
    assert result.returncode == 2
    assert "--feature-dims: has 1 values for 2 models in --models" in result.stderr


def test_table_lists_each_model_with_its_preflight_and_error():
    preflight = {"how": "scratch copy", "samples_checked": 16, "error": None, "seconds": 0.125}
    entries = [
        {"name": "model-v1", "status": "READY", "warmup_samples": 16, "count": 3, "instances": 1,
         "seconds_to_ready": 2.5, "config_changed": True, "config_written": True, "error": None,
         "preflight": preflight,
         "timings": {"preflight_s": 0.125, "load_s": 2.25, "helper_s": 0.125, "total_s": 2.5}},
        {"name": "broken", "status": "FAILED", "warmup_samples": 4, "count": 3, "instances": 2,
         "seconds_to_ready": None, "config_changed": True, "config_written": True,
         "config_restored": True, "error": "load failed: bad file", "preflight": None,
         "timings": {"load_s": 0.5, "helper_s": 0.25, "total_s": 0.75}},
        {"name": "read-only", "status": "READY", "warmup_samples": 4, "count": 3, "instances": 1,
         "seconds_to_ready": 1.0, "config_changed": True, "config_written": False, "error": None,
         "fallback": "/m/read-only/config.pbtxt is read-only (mode 0444); loaded with ...",
         "preflight": {**preflight, "how": "requests to the serving model", "samples_checked": 2}},
        {"name": "picky", "status": "FAILED", "warmup_samples": 4, "count": 3, "instances": 1,
         "seconds_to_ready": None, "config_changed": True, "config_written": False,
         "preflight": {**preflight, "error": "sample ..."},
         "error": "preflight: sample 'g4' (x [1, 4, 64]) failed: PyTorch execute failure: The following "
                  "... RuntimeError: too long; nothing was written or loaded",
         "detail": "PyTorch execute failure: The following\n  File code/__torch__.py, line 18\n"
                   "    ~~~ <--- HERE\nRuntimeError: too long\n"},
        {"name": "embed", "status": "READY", "kind": "ensemble", "members": ["tokenizer", "text-encoder"],
         "warmup_samples": 4, "seconds_to_ready": 3.0, "preflight": None,
         "timings": {"load_s": 0.25, "total_s": 0.25}},
        {"name": "text-encoder", "status": "READY", "kind": "plain", "warmed_for": ["embed"],
         "derived_samples": 2, "warmup_samples": 6, "count": 3, "instances": 1, "seconds_to_ready": 2.0,
         "config_written": True, "preflight": preflight},
    ]
    lines = warmup_models.format_table([ModelEntry.from_dict(entry) for entry in entries]).splitlines()
    assert lines[0].split() == [
        "model", "status", "samples", "runs", "instances", "preflight", "load", "helper", "seconds", "config", "notes"
    ]
    # The preflight, Triton's load and the helper's own time: the three parts of the seconds.
    assert lines[2].split() == ["model-v1", "READY", "16", "3", "1", "16", "scratch", "0.12s", "2.25", "0.12", "2.50", "rewritten"]
    assert lines[3].split()[:10] == ["broken", "FAILED", "4", "3", "2", "-", "0.50", "0.25", "-", "restored"]
    assert lines[3].endswith("load failed: bad file")
    # A report without timings (an older helper) shows none.
    assert lines[4].split()[:13] == ["read-only", "READY", "4", "3", "1", "2", "serving", "0.12s", "-", "-", "1.00", "not", "written"]
    assert lines[4].endswith("loaded with the planned config: /m/read-only/config.pbtxt is read-only (mode 0444)")
    # The helper's one-line reason; its whole text waits for --verbose.
    assert lines[5].split()[:6] == ["picky", "FAILED", "4", "3", "1", "FAILED"]
    assert lines[5].endswith("RuntimeError: too long; nothing was written or loaded")
    assert "HERE" not in "\n".join(lines)
    # An ensemble shows its members; a member, the shapes it got from it.
    assert lines[6].split()[:10] == ["embed", "READY", "4", "-", "-", "-", "0.25", "-", "3.00", "-"]
    assert lines[6].endswith("ensemble of tokenizer, text-encoder")
    assert lines[7].endswith("member of embed (2 new shapes from it)")
    assert len(lines) == 8


def test_model_states_fill_in_models_never_loaded():
    index = [
        {"name": "model-v1"},
        {"name": "warmup_helper", "version": "1", "state": "READY"},
        {"name": "broken", "version": "1", "state": "UNAVAILABLE", "reason": "bad file"},
    ]
    assert query_model_states.model_states(index) == [
        {"name": "model-v1", "version": "", "state": "UNAVAILABLE"},
        {"name": "warmup_helper", "version": "1", "state": "READY"},
        {"name": "broken", "version": "1", "state": "UNAVAILABLE"},
    ]


def test_wait_ready_on_an_unreachable_server_exits_3_after_its_timeout(run_cli):
    result = run_cli(MAINS["triton-warmup-states"], "-u", f"localhost:{unused_port()}", "--wait-ready", "m", "--timeout", "0.5")
    assert result.returncode == 3, result.stderr
    assert "no Triton server answered" in result.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--plan", "plans/example.yaml", "--models", "model-v1"], "leave out --models"),
        (["--plan", "plans/example.yaml", "--group-size-max", "8"], "leave out --group-size-max"),
        (["--plan", "plans/example.yaml", "--all"], "leave out --all"),
        (["--all", "--models", "model-v1"], "leave out --models"),
        (["--all", "--feature-dims", "64"], "leave out --models and --feature-dims"),
        (["--mode", "reload"], "invalid choice"),
    ],
)
def test_conflicting_flags_exit_2(run_cli, args, words):
    result = run_cli(MAINS["triton-warmup"], *args)
    assert result.returncode == 2
    assert words in result.stderr


def test_a_bad_plan_file_exits_2_naming_its_line_before_any_request(run_cli, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("models:\n  model-v1:\n    group_size_max: 4\n    count: 0\n")
    # No server listens on this port: the plan is refused before any connection.
    result = run_cli(MAINS["triton-warmup"], "-u", f"localhost:{unused_port()}", "--plan", str(plan))
    assert result.returncode == 2
    assert f"{plan}, line 4: models.model-v1.count: must be at least 1" in result.stderr


def test_serve_refuses_a_bad_plan_before_starting_a_server(run_cli, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text('{"models": {"model-v1": {"group_size_max": 4, "cuont": 3}}}')
    result = run_cli(MAINS["triton-warmup-serve"], "--warmup", str(plan))
    assert result.returncode == 2
    assert "line 1: models.model-v1.cuont: unknown key" in result.stderr
    assert "tritonserver" not in result.stdout


def inputs_of(args):
    parsed = warmup_models.parse_args(args)
    return warmup_models.request_arrays(parsed), parsed


def test_the_request_carries_the_plan_or_all_models_or_the_names():
    tensors, parsed = inputs_of(["--plan", str(PROJECT_ROOT / "plans" / "example.yaml"), "--mode", "requests"])
    assert sorted(tensors) == ["MODE", "PLAN"]
    assert parsed.watch_models == ["model-v1", "model-v2", "model-v3"]
    tensors, parsed = inputs_of(["--all", "--group-size-max", "8"])
    assert sorted(tensors) == ["ALL_MODELS", "GROUP_SIZE_MAX", "GROUP_SIZE_MIN"]
    assert parsed.watch_models is None
    tensors, parsed = inputs_of([])
    assert sorted(tensors) == ["GROUP_SIZE_MAX", "GROUP_SIZE_MIN", "MODELS"]
    assert parsed.watch_models == warmup_models.DEFAULT_MODELS


@pytest.mark.parametrize(
    "entry, seen_loading, expected",
    [
        ({"state": "READY"}, True, "READY"),
        ({"state": "LOADING"}, False, "LOADING"),
        ({}, False, "UNAVAILABLE"),
        ({"state": "UNAVAILABLE", "reason": "unloaded"}, True, "UNAVAILABLE"),
        ({"state": "UNAVAILABLE", "reason": "bad file"}, True, "FAILED"),
        # A reason from an earlier failure, before this warmup touched it.
        ({"state": "UNAVAILABLE", "reason": "bad file"}, False, "UNAVAILABLE"),
    ],
)
def test_live_state_calls_a_model_failed_once_it_loaded_and_fell_back(entry, seen_loading, expected):
    assert live_view.live_state(entry, seen_loading) == expected


def test_requests_mode_rows_say_the_config_was_not_used():
    entry = {"name": "m", "status": "READY", "mode": "requests", "warmup_samples": 4, "count": 3,
             "instances": 1, "seconds_to_ready": None, "seconds_warming": 0.25, "config_changed": False,
             "error": None}
    row = warmup_models.format_table([ModelEntry.from_dict(entry)]).splitlines()[2].split()
    assert row == ["m", "READY", "4", "3", "1", "-", "-", "-", "0.25", "not", "used"]


def test_rows_say_whether_a_ready_model_was_warmed_in_place_or_reloaded_and_why():
    common = {"status": "READY", "warmup_samples": 4, "count": 3, "instances": 1, "seconds_to_ready": 0.5,
              "config_changed": True, "config_written": True}
    in_place = ModelEntry.from_dict({**common, "name": "a", "rewarm": "in place", "in_place_runs": 6,
                                     "timings": {"in_place_s": 0.42, "helper_s": 0.01, "total_s": 0.5}})
    reloaded = ModelEntry.from_dict({**common, "name": "b", "rewarm": "reloaded",
                                     "rewarm_reason": "config.pbtxt changed since the serving version loaded",
                                     "timings": {"load_s": 0.3, "helper_s": 0.01, "total_s": 0.5}})
    lines = warmup_models.format_table([in_place, reloaded]).splitlines()
    assert "in place 0.42" in lines[2] and lines[2].endswith("rewritten  warmed in place, not reloaded")
    assert lines[3].endswith("reloaded: config.pbtxt changed since the serving version loaded")
    assert " 0.30 " in lines[3]


def test_load_failures_are_models_that_were_tried_and_failed():
    index = [
        {"name": "a", "state": "UNAVAILABLE", "reason": "unloaded"},
        {"name": "b", "state": "UNAVAILABLE", "reason": "failed to load: bad file"},
        {"name": "c"},
        {"name": "d", "state": "READY"},
    ]
    assert query_model_states.load_failures(index, ["a", "b", "c", "d"]) == {"b": "failed to load: bad file"}


def watcher(mode=None, ready_before=(), index=None, settled=()):
    args = warmup_models.parse_args(["-u", f"localhost:{unused_port()}"] + (["--mode", mode] if mode else []))
    view = live_view.StateWatcher(args, ["a", "b", "c"], stream=open("/dev/null", "w"))
    view.ready_before = set(ready_before)
    view.index_states = dict(index or {})
    view.settled = set(settled)
    return view


def test_live_view_shows_reloads_as_loading_until_the_report_settles_them():
    # The index says READY during a reload (the old version serves).
    view = watcher(ready_before={"a", "b"}, index={"a": "READY", "b": "READY", "c": "UNAVAILABLE"})
    assert view._current() == {"a": "LOADING", "b": "LOADING", "c": "UNAVAILABLE"}
    # In the requests mode nothing reloads: READY stays READY.
    view = watcher(mode="requests", ready_before={"a"}, index={"a": "READY"})
    assert view._current() == {"a": "READY"}


def test_live_view_marks_unsettled_models_loading_while_the_index_waits():
    view = watcher(index={"a": "READY", "b": "UNAVAILABLE", "c": "FAILED"}, settled={"a", "c"})
    view.poll_since = 0.0  # a query that has waited since the clock's start
    assert view._current() == {"a": "READY", "b": "LOADING", "c": "FAILED"}


def test_a_model_settles_when_it_turns_ready_after_it_was_not():
    view = watcher(ready_before={"a"})
    view._show("b", "READY", 1.0)
    view._show("a", "READY", 1.0)
    assert view.settled == {"b"}


def many_models_view(count):
    args = warmup_models.parse_args(["-u", f"localhost:{unused_port()}", "--all"])
    stream = io.StringIO()  # not a terminal: plain lines
    view = live_view.StateWatcher(args, None, stream=stream)
    view.ready_before = set()
    return view, stream


def test_a_repository_of_many_models_shows_counts_and_each_failure_not_a_line_per_model():
    count = live_view.MANY_MODELS + 10
    names = [f"m{index:03d}" for index in range(count)]
    view, stream = many_models_view(count)
    view.index_states = {name: "UNAVAILABLE" for name in names}
    view.redraw(0.5)
    view.index_states.update({name: "READY" for name in names[:10]})
    view.index_states.update({name: "LOADING" for name in names[10:14]})
    view.index_states[names[14]] = "FAILED"
    view.redraw(1.0)  # a failure is shown at once; the counts wait for their interval
    view.redraw(live_view._SUMMARY_LINE_INTERVAL_S + 0.5)
    lines = stream.getvalue().splitlines()
    assert lines == [
        f"[   0.5s] 0 of {count} READY, {count} waiting",
        f"[   1.0s] {names[14]} FAILED",
        f"[   {live_view._SUMMARY_LINE_INTERVAL_S + 0.5:.1f}s] 10 of {count} READY, 4 LOADING, 1 FAILED, {count - 15} waiting",
    ]
    entries = [ModelEntry(name=name, status=Status.READY, finished_s=2.0) for name in names]
    entries[14] = ModelEntry(name=names[14], status=Status.FAILED, error="load failed", finished_s=1.0)
    view.finish(entries)
    (final,) = stream.getvalue().splitlines()[3:]
    assert final.endswith(f"] {count - 1} of {count} READY, 1 FAILED")


def test_a_few_models_keep_a_line_each():
    view, stream = many_models_view(3)
    view.index_states = {"a": "UNAVAILABLE", "b": "READY", "c": "LOADING"}
    view.redraw(0.5)
    assert stream.getvalue().splitlines() == ["[   0.5s] a UNAVAILABLE", "[   0.5s] b READY", "[   0.5s] c LOADING"]


def test_several_urls_are_kept_in_order_and_a_repeated_one_exits_2(capsys):
    args = warmup_models.parse_args(["-u", "a:8000", "-u", "b:8000", "-u", "c:8000"])
    assert args.urls == ["a:8000", "b:8000", "c:8000"]
    assert warmup_models.parse_args(["-i", "grpc"]).urls == ["localhost:8001"]
    with pytest.raises(SystemExit) as raised:
        warmup_models.parse_args(["-u", "a:8000", "-u", "b:8000", "-u", "a:8000"])
    assert raised.value.code == 2
    assert "-u a:8000 given more than once" in capsys.readouterr().err


@pytest.mark.parametrize(
    "codes, expected",
    [
        ([0, 0, 0], 0),
        ([0, 3], 3),
        ([3, 3], 3),
        ([0, 1], 1),
        ([3, 1, 0], 1),
    ],
)
def test_fan_out_exit_code_is_the_worst_server_and_unreachable_only_when_nothing_else_failed(codes, expected):
    results = [warmup_models.ServerResult(f"s{index}:8000", code) for index, code in enumerate(codes)]
    assert warmup_models.overall_exit_code(results) == expected


def test_fan_out_against_servers_that_do_not_answer_reports_each_and_exits_3(capsys):
    urls = [f"localhost:{unused_port()}" for _ in range(3)]

    code = warmup_models.main([arg for url in urls for arg in ("-u", url)] + ["--timeout", "5"])

    out, err = capsys.readouterr()
    assert code == 3
    for url in urls:
        assert f"== {url} ==" in out
        assert f"{url}  FAILED  no Triton server answers at {url}" in out
    assert f"FAILED: 3 of 3 servers did not warm: {urls}" in err


def test_wait_ready_with_a_plan_waits_for_its_models_or_for_all_but_the_helper(tmp_path):
    # The hidden one is a preflight's scratch copy, listed while it exists.
    index = [
        {"name": name}
        for name in ("model-v1", "model-v2", "warmup_helper", "extra", ".warmup_helper.preflight.extra")
    ]
    named = tmp_path / "named.yaml"
    named.write_text("defaults: {group_size_max: 2}\nmodels:\n  model-v2: {}\n  model-v1: {}\n")
    every = tmp_path / "every.yaml"
    every.write_text("all_models: true\ndefaults: {group_size_max: 2}\nmodels:\n  extra: {count: 2}\n")

    def waited(*argv):
        args = query_model_states.parse_args(list(argv))
        return query_model_states.waited_models(index, args)

    assert waited("--wait-ready", "--plan", str(named)) == ["model-v2", "model-v1"]
    assert waited("--wait-ready", "model-v1", "--plan", str(named)) == ["model-v1", "model-v2"]
    assert waited("--wait-ready", "--plan", str(every)) == ["extra", "model-v1", "model-v2"]
    # The probe for a helper whose warm_on_start is "all".
    assert waited("--wait-ready", "--all") == ["model-v1", "model-v2", "extra"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--plan", "plans/example.yaml"], "--plan goes with --wait-ready"),
        (["--wait-ready"], "--wait-ready needs model names, --plan or --all"),
        (["--all"], "--all goes with --wait-ready"),
    ],
)
def test_wait_ready_usage_errors_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as raised:
        query_model_states.parse_args(argv)
    assert raised.value.code == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [["--start-report", "--all"], ["--start-report", "--models", "model-v1"], ["--start-report", "--plan", "plans/example.yaml"]],
)
def test_start_report_warms_nothing_so_it_takes_no_plan(flags, capsys):
    with pytest.raises(SystemExit) as raised:
        warmup_models.parse_args(flags)
    assert raised.value.code == 2
    assert "--start-report warms nothing; leave out" in capsys.readouterr().err


def test_start_report_sends_start_report_alone():
    args = warmup_models.parse_args(["--start-report"])
    arrays = warmup_models.request_arrays(args)
    assert list(arrays) == ["START_REPORT"] and arrays["START_REPORT"].tolist() == [True]


@pytest.mark.parametrize("script", ["triton-warmup", "triton-warmup-states"])
def test_a_header_without_a_value_is_bad_usage_before_any_request(run_cli, script):
    # Two -u for warmup_models: the check runs before the servers' threads start.
    urls = ["-u", f"localhost:{unused_port()}"] + (["-u", f"localhost:{unused_port()}"] if script == "triton-warmup" else [])

    result = run_cli(MAINS[script], *urls, "-H", "no-equals-sign")

    assert result.returncode == 2
    assert "--header needs KEY=VALUE, got 'no-equals-sign'" in result.stderr
    assert "no Triton server answers" not in result.stderr


def test_plain_lines_never_go_back_in_time_when_the_report_settles_a_model(tmp_path):
    # The index said LOADING at 1.0 s (a poll that waited on Triton), but the
    # helper's report says the model finished at 0.4 s.
    log = tmp_path / "live.txt"
    view = watcher()
    view.stream = open(log, "w")
    view.plain, view.ready_before = True, set()
    view.started -= 2.0  # the request went out 2 s ago
    view._show("a", "LOADING", 1.0)
    view.finish([ModelEntry.from_dict({"name": "a", "status": "READY", "finished_s": 0.4}),
                 ModelEntry.from_dict({"name": "b", "status": "FAILED", "finished_s": 1.5})])
    view.stream.close()
    lines = log.read_text().splitlines()
    assert lines == ["[   1.0s] a LOADING", "[   1.0s] a READY", "[   1.5s] b FAILED"]


@pytest.mark.parametrize(
    "given",
    [
        ["--trace-config", "triton,file=t.json", "--trace-config", "level=TENSORS", "--exit-timeout-secs", "5"],
        ["--trace-config=triton,file=t.json", "--trace-config=level=TENSORS", "--exit-timeout-secs=5"],
        ["--trace-config", "triton,file=t.json", "--trace-config=level=TENSORS", "--exit-timeout-secs", "5"],
    ],
)
def test_serve_passes_tritonserver_flags_in_either_spelling(given):
    args, passthrough, command = serve.parse_args(["--http-port", "9000", *given, "--", "echo", "hi"])
    assert args.http_port == 9000
    assert passthrough == ["--trace-config=triton,file=t.json", "--trace-config=level=TENSORS", "--exit-timeout-secs=5"]
    assert command == ["echo", "hi"]


@pytest.mark.parametrize(
    "given, words",
    [
        (["stray"], "unexpected argument 'stray'; put a command after '--'"),
        (["--log-file"], "--log-file needs a value"),
    ],
)
def test_serve_refuses_a_word_without_a_flag_and_a_flag_without_a_value(run_cli, given, words):
    result = run_cli(MAINS["triton-warmup-serve"], *given)
    assert result.returncode == 2
    assert words in result.stderr


def test_a_thread_count_mismatch_shows_in_the_row_and_its_whole_text_in_a_note():
    note = "OMP_NUM_THREADS is 2 on the server but the model runs 1 intra-op thread(s): ..."
    entry = ModelEntry.from_dict({"name": "m", "status": "READY", "warmup_samples": 4, "count": 3, "instances": 1,
                                  "seconds_to_ready": 0.5, "threads": note})
    row = warmup_models.format_table([entry]).splitlines()[2]
    assert row.endswith("thread counts differ (see NOTE)")
    assert ModelEntry.from_dict(entry.to_dict()).threads == note



def test_a_model_that_switches_up_on_purpose_is_informed_not_warned():
    from triton_warmup.threads import ThreadMismatch

    note = ThreadMismatch("m", intra_op=2, openmp_default=1).note
    entry = ModelEntry.from_dict({"name": "m", "status": "READY", "warmup_samples": 4, "count": 3, "instances": 1,
                                  "seconds_to_ready": 0.5, "threads": note})
    row = warmup_models.format_table([entry]).splitlines()[2]
    assert row.endswith("switches its threads up (see NOTE)")


class _ScriptedIndex:
    """Answers get_model_repository_index with the errors it is given, then an index."""

    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = 0

    def get_model_repository_index(self, headers=None):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return [{"name": "model-v1", "state": "READY"}]


def test_an_index_read_that_met_a_vanished_entry_is_asked_again():
    vanished = InferenceServerException("failed to stat file /models/.model-v1.config.pbtxt.before-warmup")
    client = _ScriptedIndex([vanished, vanished])
    assert client_flags.repository_index(client, "http") == [{"name": "model-v1", "state": "READY"}]
    assert client.calls == 3


def test_any_other_index_error_is_raised_at_once():
    refused = InferenceServerException("This protocol is restricted, expecting header 'x-token'")
    client = _ScriptedIndex([refused])
    with pytest.raises(InferenceServerException, match="restricted"):
        client_flags.repository_index(client, "http")
    assert client.calls == 1


METRICS_PAGE = """\
# HELP nv_inference_count Number of inferences performed
# TYPE nv_inference_count counter
nv_inference_count{model="model-v1",version="1"} 40
# HELP triton_warmup_requests_seen_total Requests the helper observed after READY (1 in its watch_rate)
# TYPE triton_warmup_requests_seen_total counter
triton_warmup_requests_seen_total{model="model-v1",version="1"} 40
triton_warmup_requests_seen_total{model="text-encoder",version="1"} 0
# HELP triton_warmup_cold_requests_total Observed requests whose shape no warmup sample covers
# TYPE triton_warmup_cold_requests_total counter
triton_warmup_cold_requests_total{model="model-v1",version="1"} 4
triton_warmup_cold_requests_total{model="text-encoder",version="1"} 0
# HELP triton_warmup_warmed_shapes Distinct request shapes that the model's warmup samples cover
# TYPE triton_warmup_warmed_shapes gauge
triton_warmup_warmed_shapes{model="model-v1",version="1"} 16
triton_warmup_warmed_shapes{model="text-encoder",version="1"} 8
# HELP triton_warmup_last_warmup_seconds Seconds the model's last warmup by the helper took, from plan to READY
# TYPE triton_warmup_last_warmup_seconds gauge
triton_warmup_last_warmup_seconds{model="model-v1",version="1"} 0.435
# HELP triton_warmup_learned_shapes Of the warmed shapes, those the helper learned from live traffic
# TYPE triton_warmup_learned_shapes gauge
triton_warmup_learned_shapes{model="model-v1",version="1"} 3
# HELP triton_warmup_adapted_samples_total Shapes this server learned from live traffic (helper parameter adapt)
# TYPE triton_warmup_adapted_samples_total counter
triton_warmup_adapted_samples_total{model="model-v1",version="1"} 2
# HELP triton_warmup_adapted_samples_not_kept_total Learned shapes warmed in place only
# TYPE triton_warmup_adapted_samples_not_kept_total counter
triton_warmup_adapted_samples_not_kept_total{model="model-v1",version="1"} 1
"""


def test_states_reads_the_helpers_figures_from_a_metrics_page():
    figures = query_model_states.warmth(METRICS_PAGE)
    assert set(figures) == {("model-v1", "1"), ("text-encoder", "1")}
    lines = query_model_states.format_warmth(figures).splitlines()
    assert lines[2].split() == ["model-v1", "1", "16", "0.43", "40", "4", "10.0%", "-", "3", "2", "1"]
    # No request seen: no share to show, rather than a division by zero.
    assert lines[3].split() == ["text-encoder", "1", "8", "-", "0", "0", "-", "-", "-", "-", "-"]


def test_the_metrics_endpoint_defaults_to_the_servers_host_on_port_8002():
    args = query_model_states.parse_args(["-u", "triton.example:8000", "--metrics"])
    assert query_model_states.metrics_url(args) == "triton.example:8002"
    args = query_model_states.parse_args(["--metrics", "--metrics-url", "localhost:9102"])
    assert query_model_states.metrics_url(args) == "localhost:9102"
