"""The report's schema: what the helper sends is what the clients read."""

import json

from triton_warmup.report import LockHold, ModelEntry, PreflightRecord, Status, Timings, WarmupReport


def full_report():
    return WarmupReport(
        models=[
            ModelEntry(
                name="model-v1", status=Status.READY, warmup_samples=16, count=3, instances=1,
                group_sizes=[1, 2], batch_sizes=[1, 8], config_changed=True, config_written=True,
                seconds_to_ready=0.5, finished_s=0.5, lock=LockHold(0.001, 1700000000.0, 1700000000.5),
                preflight=PreflightRecord(how="scratch copy", why="model not loaded", samples_checked=16,
                                          seconds=0.02, load_s=0.01),
                timings=Timings(replan_s=0.001, preflight_s=0.02, write_s=0.002, load_s=0.4),
            ),
            ModelEntry(name="picky", error="preflight: sample 'g4' failed", serving_previous_version=False,
                       preflight=PreflightRecord(error="sample 'g4' failed", failed_sample={"sample": "g4"})),
        ],
        mode="load", mode_reason="explicit model-control mode", seconds_total=0.7, plan_s=0.003,
    )


def test_the_json_the_helper_sends_reads_back_as_the_same_records():
    report = full_report()
    sent = json.loads(json.dumps(report.to_dict()))
    assert sent["loaded"] == ["model-v1"] and sent["failed"] == ["picky"]
    assert sent["models"][0]["status"] == "READY" and sent["models"][0]["lock"]["waited_s"] == 0.001
    assert WarmupReport.from_dict(sent) == report


def test_a_client_reads_a_newer_helpers_report_and_an_older_ones():
    sent = full_report().to_dict()
    sent["models"][0]["a_field_from_the_future"] = 1
    sent["something_new"] = {"x": 1}
    del sent["models"][1]["timings"]
    read = WarmupReport.from_dict(sent)
    assert read.entry("model-v1").ready and read.entry("picky").timings == Timings()
    assert read.failed == ["picky"] and not read.entry("picky").preflight.passed


def test_status_compares_with_the_text_it_travels_as():
    assert Status.READY == "READY" and str(Status.FAILED) == "FAILED"
    assert ModelEntry.from_dict({"name": "m", "status": "READY"}).status is Status.READY
