"""The live traffic watch (``helper.watch``) and its metrics, without a
server: Triton's endpoints are a fake, the trace files are written in
Triton's format, and the metrics families are fakes read back."""

import json

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.metrics import (
    COLD_REQUESTS,
    COMPILES_AFTER_READY,
    LAST_WARMUP_SECONDS,
    REQUESTS_SEEN,
    WARMED_SHAPES,
    WarmupMetrics,
)
from triton_warmup.helper.watch import DEFAULT_RATE, OWN_REQUEST_ID, TrafficWatch, trace_parts
from triton_warmup.pytorch2 import STATUS_FOLDER

MODEL = """
name: "m"
platform: "pytorch_libtorch"
max_batch_size: 4
input [{ name: "x", data_type: TYPE_FP32, dims: [-1, 8] }]
output [{ name: "y", data_type: TYPE_FP32, dims: [8] }]
"""
ENSEMBLE = """
name: "e"
platform: "ensemble"
max_batch_size: 4
input [{ name: "x", data_type: TYPE_FP32, dims: [-1, 8] }]
output [{ name: "y", data_type: TYPE_FP32, dims: [8] }]
ensemble_scheduling { step [{ model_name: "m", model_version: -1, input_map { key: "x" value: "x" }, output_map { key: "y" value: "y" } }] }
"""
OFF = {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1", "log_frequency": "0"}


def with_samples(text, shapes):
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    for batch, group in shapes:
        sample = config.model_warmup.add(name=f"b{batch}g{group}", batch_size=batch)
        sample.inputs["x"].data_type = model_config_pb2.TYPE_FP32
        sample.inputs["x"].dims.extend([group, 8])
        sample.inputs["x"].random_data = True
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


class FakeServer:
    def __init__(self, models):
        self.configs = models
        self.index = [{"name": name, "version": "1", "state": "READY"} for name in models]
        self.index += [{"name": "warmup_helper", "version": "1", "state": "READY"},
                       {"name": ".warmup_helper.preflight.m", "version": "1", "state": "READY"}]
        self.server_setting = dict(OFF)
        self.model_settings = {}
        self.updates = []
        # Tracing under load is safe from 2.57.0 on (watch.SAFE_TRACING_VERSION).
        self.version = "2.57.0"

    def server_metadata(self):
        return {"name": "triton", "version": self.version}

    def repository_index(self):
        return self.index

    def model_config(self, name):
        return self.configs[name]

    def trace_setting(self, name=None):
        return dict(self.server_setting if name is None else self.model_settings.get(name, self.server_setting))

    def update_trace_setting(self, name, setting):
        self.updates.append((name, setting))
        merged = {**self.trace_setting(name), **{key: value for key, value in setting.items() if value is not None}}
        if all(value is None for value in setting.values()):
            self.model_settings.pop(name, None)
        else:
            self.model_settings[name] = merged
        return merged


class FakeFamily:
    def __init__(self, name):
        self.name, self.values = name, {}

    def Metric(self, labels):  # noqa: N802 - pb_utils' spelling
        family, key = self, (labels["model"], labels["version"])
        family.values.setdefault(key, 0.0)

        class Metric:
            def set(self, value):
                family.values[key] = value

            def increment(self, value):
                family.values[key] += value

        return Metric()


@pytest.fixture
def families():
    made = {}

    def make(name, kind, description):
        made[name] = FakeFamily(name)
        return made[name]

    return made, WarmupMetrics(make)


def trace_records(trace_id, model, x_shape, request_id=None, parent_id=None):
    model_record = {"id": trace_id, "model_name": model, "model_version": 1}
    if request_id:
        model_record["request_id"] = request_id
    if parent_id is not None:
        model_record["parent_id"] = parent_id
    tensor = {"name": "x", "dtype": "FP32", "shape": ",".join(map(str, x_shape)), "data": "0"}
    return [model_record, {"id": trace_id, "activity": "TENSOR_QUEUE_INPUT", "tensor": tensor}]


def write_part(trace_file, index, *traces, complete=True):
    text = json.dumps([record for trace in traces for record in trace])
    path = trace_file.parent / f"{trace_file.name}.{index}"
    path.write_text(text if complete else text[:-1])
    return path


def make_watch(server, metrics, trace_file, rate=1, **options):
    lines = []
    watch = TrafficWatch(server, metrics, rate, str(trace_file) if trace_file else None, "warmup_helper",
                         lines.append, lines.append, **options)
    return watch, lines


def test_tracing_goes_on_for_ready_models_and_warmed_shapes_are_published(tmp_path, families):
    made, metrics = families
    server = FakeServer({"m": with_samples(MODEL, [(1, 2), (1, 3), (2, 2)]), "e": with_samples(ENSEMBLE, [])})
    watch, lines = make_watch(server, metrics, tmp_path / "trace.json", rate=10)
    watch.cycle()
    assert server.model_settings["m"]["trace_level"] == ["TIMESTAMPS", "TENSORS"]
    assert server.model_settings["m"]["trace_rate"] == "10" and server.model_settings["m"]["log_frequency"] == "1"
    # Ensembles are traced (their members' requests ride on their traces); the helper and scratch copies never.
    assert set(server.model_settings) == {"m", "e"}
    assert made[WARMED_SHAPES].values == {("m", "1"): 3}
    # The counters exist at 0 from the start, so a share has a denominator.
    assert made[REQUESTS_SEEN].values == {("m", "1"): 0} and made[COLD_REQUESTS].values == {("m", "1"): 0}
    assert "traffic watch on for 'm': 1 request in 10" in lines


def test_a_known_mix_is_counted_exactly_and_the_files_go(tmp_path, families):
    made, metrics = families
    server = FakeServer({"m": with_samples(MODEL, [(1, 2), (2, 2)]), "e": with_samples(ENSEMBLE, [])})
    trace_file = tmp_path / "trace.json"
    watch, _ = make_watch(server, metrics, trace_file)
    watch.cycle()
    write_part(trace_file, 0, trace_records(1, "m", [1, 2, 8]), trace_records(2, "m", [2, 2, 8]))
    write_part(trace_file, 1, trace_records(3, "m", [1, 5, 8]))  # a group size no sample has
    write_part(trace_file, 2, trace_records(4, "m", [4, 2, 8]))  # a batch size no sample has
    # The helper's own preflight or in-place run: not traffic.
    write_part(trace_file, 3, trace_records(5, "m", [1, 9, 8], request_id=f"{OWN_REQUEST_ID}m"))
    # Through the ensemble: counted at its composing model, the ensemble's own request not at all.
    write_part(trace_file, 4, trace_records(6, "e", [1, 2, 8]), trace_records(7, "m", [1, 7, 8], parent_id=6))
    watch.cycle()
    assert made[REQUESTS_SEEN].values == {("m", "1"): 5}
    assert made[COLD_REQUESTS].values == {("m", "1"): 3}
    assert trace_parts(trace_file) == []


def test_a_shape_the_config_cannot_take_counts_as_cold(tmp_path, families):
    made, metrics = families
    server = FakeServer({"m": with_samples(MODEL, [(1, 2)])})
    trace_file = tmp_path / "trace.json"
    watch, _ = make_watch(server, metrics, trace_file)
    watch.cycle()
    write_part(trace_file, 0, trace_records(1, "m", [1, 2, 9]))  # the fixed dim is 8
    watch.cycle()
    assert made[COLD_REQUESTS].values == {("m", "1"): 1}


def test_a_file_triton_still_writes_waits_for_the_next_cycle(tmp_path, families):
    made, metrics = families
    server = FakeServer({"m": with_samples(MODEL, [(1, 2)])})
    trace_file = tmp_path / "trace.json"
    watch, _ = make_watch(server, metrics, trace_file)
    watch.cycle()
    part = write_part(trace_file, 0, trace_records(1, "m", [1, 2, 8]), complete=False)
    watch.cycle()
    assert part.exists() and made[REQUESTS_SEEN].values == {("m", "1"): 0}
    write_part(trace_file, 0, trace_records(1, "m", [1, 2, 8]))
    watch.cycle()
    assert not part.exists() and made[REQUESTS_SEEN].values == {("m", "1"): 1}


def test_a_users_own_trace_setting_and_their_files_are_left_alone(tmp_path, families):
    made, metrics = families
    server = FakeServer({"m": with_samples(MODEL, [(1, 2)]), "theirs": with_samples(MODEL.replace('"m"', '"theirs"'), [])})
    theirs = {**OFF, "trace_level": ["TIMESTAMPS"], "trace_rate": "100", "log_frequency": "5"}
    server.model_settings["theirs"] = dict(theirs)
    trace_file = tmp_path / "trace.json"
    watch, lines = make_watch(server, metrics, trace_file)
    watch.cycle()
    assert server.model_settings["theirs"] == theirs
    assert all(name != "theirs" for name, _ in server.updates)
    assert any("'theirs' not counted: it has a trace setting of its own" in line for line in lines)
    their_part = write_part(trace_file, 0, trace_records(1, "theirs", [1, 2, 8]))
    watch.cycle()
    watch.stop(1)
    assert their_part.exists(), "the user's trace file was removed"
    assert ("theirs", "1") not in made[REQUESTS_SEEN].values
    assert server.model_settings["theirs"] == theirs


def test_server_wide_tracing_turns_the_watch_off_and_changes_nothing(tmp_path, families):
    made, metrics = families
    server = FakeServer({"m": with_samples(MODEL, [(1, 2)])})
    server.server_setting = {**OFF, "trace_level": ["TIMESTAMPS"]}
    watch, lines = make_watch(server, metrics, tmp_path / "trace.json")
    watch.cycle()
    assert server.updates == []
    assert "Triton traces every model already" in watch.off_reason
    assert made[WARMED_SHAPES].values == {("m", "1"): 1}


def test_without_a_trace_file_the_log_names_the_flag_and_warmed_shapes_still_show(families):
    made, metrics = families
    server = FakeServer({"m": with_samples(MODEL, [(1, 2), (1, 3)])})
    watch, lines = make_watch(server, metrics, None)
    watch.start()
    watch.stop(5)
    watch.cycle()
    assert server.updates == []
    assert any("--trace-config triton,file=PATH" in line for line in lines)
    assert made[WARMED_SHAPES].values == {("m", "1"): 2}


def test_stop_turns_off_what_the_watch_turned_on_unless_changed_since(tmp_path, families):
    _, metrics = families
    server = FakeServer({"m": with_samples(MODEL, []), "n": with_samples(MODEL.replace('"m"', '"n"'), [])})
    trace_file = tmp_path / "trace.json"
    watch, _ = make_watch(server, metrics, trace_file)
    watch.cycle()
    changed = {**server.model_settings["n"], "trace_rate": "7"}
    server.model_settings["n"] = changed
    leftover = write_part(trace_file, 5, trace_records(1, "m", [1, 2, 8]))
    watch.stop(1)
    assert "m" not in server.model_settings  # back to the server's setting
    assert server.model_settings["n"] == changed
    assert not leftover.exists()


def test_over_the_disk_cap_the_oldest_files_go_unread(tmp_path, families):
    made, metrics = families
    server = FakeServer({"m": with_samples(MODEL, [(1, 2)])})
    trace_file = tmp_path / "trace.json"
    watch, lines = make_watch(server, metrics, trace_file)
    watch.cycle()
    size = write_part(trace_file, 0, trace_records(1, "m", [1, 2, 8])).stat().st_size
    for index in range(1, 4):
        write_part(trace_file, index, trace_records(index + 1, "m", [1, 2, 8]))
    watch.max_trace_bytes = 2 * size
    watch.cycle()
    assert watch.dropped_parts == 2 and made[REQUESTS_SEEN].values == {("m", "1"): 2}
    assert any("go unread" in line for line in lines)


def test_compiles_after_ready_count_from_each_instances_first_look(tmp_path, families):
    made, metrics = families
    compiled = MODEL.replace('platform: "pytorch_libtorch"', 'backend: "pytorch"\nruntime: "model.py"')
    server = FakeServer({"m": with_samples(compiled, [(1, 2)])})
    status = tmp_path / STATUS_FOLDER / "m" / "1" / "host-42.json"
    status.parent.mkdir(parents=True)
    status.write_text(json.dumps({"executes_that_compiled": 4}))  # the warmup's, before READY
    watch, _ = make_watch(server, metrics, None, compile_cache_dir=str(tmp_path))
    watch.cycle()
    assert made[COMPILES_AFTER_READY].values == {}
    status.write_text(json.dumps({"executes_that_compiled": 6}))
    watch.cycle()
    assert made[COMPILES_AFTER_READY].values == {("m", "1"): 2}


def test_gauges_are_set_and_counters_only_grow(families):
    made, metrics = families
    metrics.set(LAST_WARMUP_SECONDS, "m", "1", 1.5)
    assert made[LAST_WARMUP_SECONDS].values == {("m", "1"): 1.5}
    with pytest.raises(ValueError, match="a counter"):
        metrics.set(REQUESTS_SEEN, "m", "1", 3)
    with pytest.raises(ValueError, match="only grows"):
        metrics.add(REQUESTS_SEEN, "m", "1", -1)



def test_closed_metrics_let_go_of_their_families_and_refuse_use(families):
    made, metrics = families
    metrics.set(WARMED_SHAPES, "m", "1", 3)
    metrics.close()
    assert metrics._families == {} and metrics._metrics == {}
    with pytest.raises(RuntimeError, match="finalizing"):
        metrics.add(REQUESTS_SEEN, "m", "1", 1)


def test_a_trace_folder_others_can_read_is_named_in_the_log(tmp_path, families):
    _, metrics = families
    folder = tmp_path / "traces"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    watch, lines = make_watch(FakeServer({}), metrics, folder / "trace.json")
    watch.start()
    watch.stop(5)
    assert any("has mode 0o755" in line and "make it 0700" in line for line in lines), lines
    folder.chmod(0o700)
    watch, lines = make_watch(FakeServer({}), metrics, folder / "trace.json")
    watch.start()
    watch.stop(5)
    assert not any("mode" in line for line in lines), lines


@pytest.mark.parametrize("version", ["2.51.0", "2.56.1"])
def test_on_a_triton_whose_tracing_can_crash_the_default_stays_off(tmp_path, families, version):
    made, metrics = families
    server = FakeServer({"m": with_samples(MODEL, [(1, 2)])})
    server.version = version
    watch, lines = make_watch(server, metrics, tmp_path / "trace.json", rate=None)
    watch.cycle()
    watch.cycle()
    assert server.updates == []
    assert f"Triton {version} can crash while it traces under load (server issue #7795" in watch.off_reason
    assert sum("traffic watch off" in line for line in lines) == 1
    assert made[WARMED_SHAPES].values == {("m", "1"): 1}


def test_an_explicit_watch_rate_turns_it_on_there_with_a_warning(tmp_path, families):
    _, metrics = families
    server = FakeServer({"m": with_samples(MODEL, [(1, 2)])})
    server.version = "2.51.0"
    watch, lines = make_watch(server, metrics, tmp_path / "trace.json", rate=100)
    watch.cycle()
    assert server.model_settings["m"]["trace_rate"] == "100"
    assert any("as the helper's config asks, although Triton 2.51.0 can crash" in line for line in lines)


def test_the_default_rate_on_a_triton_that_traces_safely(tmp_path, families):
    _, metrics = families
    server = FakeServer({"m": with_samples(MODEL, [(1, 2)])})
    server.version = "2.58.0"
    watch, lines = make_watch(server, metrics, tmp_path / "trace.json", rate=None)
    watch.cycle()
    assert server.model_settings["m"]["trace_rate"] == str(DEFAULT_RATE)
    assert not any("crash" in line for line in lines)


def test_traces_without_input_tensors_are_named_once(tmp_path, families):
    made, metrics = families
    server = FakeServer({"m": with_samples(MODEL, [(1, 2)])})
    trace_file = tmp_path / "trace.json"
    watch, lines = make_watch(server, metrics, trace_file)
    watch.cycle()
    # What Triton 2.51 writes for a request its sequence batcher scheduled: no TENSOR_QUEUE_INPUT.
    for index in range(2):
        write_part(trace_file, index, [{"id": index + 1, "model_name": "m", "model_version": 1}])
    watch.cycle()
    assert made[REQUESTS_SEEN].values == {("m", "1"): 0} and trace_parts(trace_file) == []
    assert sum("the traces of 'm' hold no input tensors" in line for line in lines) == 1


def test_every_series_carries_the_helpers_stub_pid():
    """A reload's two helper instances never share a label set: Triton 2.51
    frees a shared one under the survivor (metrics.INSTANCE_LABEL)."""
    seen = []

    class Family:
        def Metric(self, labels):  # noqa: N802 - pb_utils' spelling
            seen.append(labels)
            return type("Metric", (), {"set": lambda self, value: None, "increment": lambda self, value: None})()

    old, new = WarmupMetrics(lambda *args: Family(), instance="101"), WarmupMetrics(lambda *args: Family(), instance="202")
    old.set(WARMED_SHAPES, "m", "1", 3)
    new.set(WARMED_SHAPES, "m", "1", 3)
    assert seen == [{"model": "m", "version": "1", "helper_pid": "101"},
                    {"model": "m", "version": "1", "helper_pid": "202"}]
