"""Parsed configs kept beside the models: used for the exact text they were
made from, ignored when anything does not check out, written only after a
load."""

import pytest
from google.protobuf import text_format

from triton_warmup.helper import config_cache
from triton_warmup.helper.config_rewrite import _parsed_binary, read_config
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.load_jobs import run_job
from triton_warmup.report import Status
from repository_fixtures import RecordingControl, apply, snapshot, warmup_request


@pytest.fixture
def fresh_process(monkeypatch):
    """What a restarted helper knows: nothing parsed in memory. Returns the
    number of text parses, counted."""
    _parsed_binary.cache_clear()
    parses = []
    real_parse = text_format.Parse

    def counting_parse(*args, **kwargs):
        parses.append(1)
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(text_format, "Parse", counting_parse)
    yield parses
    _parsed_binary.cache_clear()


def test_a_restart_reads_the_config_its_last_load_kept_without_parsing_text(repository, fresh_process):
    apply(repository, warmup_request(group_max=4))
    model_dir = repository / "model-v1"
    assert config_cache.cache_path(model_dir).is_file()
    text = (model_dir / "config.pbtxt").read_bytes()
    _parsed_binary.cache_clear()
    fresh_process.clear()
    _, config = read_config(model_dir)
    assert fresh_process == []
    assert config == text_format.Parse(text.decode(), type(config)())
    assert len(config.model_warmup) == 4 * 4


def test_an_edited_config_is_parsed_from_its_text(repository, fresh_process):
    apply(repository, warmup_request(group_max=2))
    path = repository / "model-v1" / "config.pbtxt"
    path.write_text(path.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
    _parsed_binary.cache_clear()
    fresh_process.clear()
    _, config = read_config(repository / "model-v1")
    assert fresh_process == [1] and config.max_batch_size == 4


@pytest.mark.parametrize(
    "damage",
    [
        lambda content: content[:-1] + bytes([content[-1] ^ 1]),  # a flipped bit in the binary
        lambda content: content[:40],  # cut short
        lambda content: b"not a cache file",
        lambda content: b"",
    ],
    ids=["flipped bit", "truncated", "foreign", "empty"],
)
def test_a_damaged_file_is_ignored_and_the_text_parsed(repository, fresh_process, damage):
    apply(repository, warmup_request(group_max=2))
    model_dir = repository / "model-v1"
    path = config_cache.cache_path(model_dir)
    path.write_bytes(damage(path.read_bytes()))
    text = (model_dir / "config.pbtxt").read_bytes()
    _parsed_binary.cache_clear()
    fresh_process.clear()
    _, config = read_config(model_dir)
    assert fresh_process == [1]
    assert config == text_format.Parse(text.decode(), type(config)())


def test_a_refused_request_and_a_failed_load_keep_nothing(repository):
    before = snapshot(repository)
    with pytest.raises(Exception):
        plan_jobs(repository, warmup_request(models=("model-v1", "no-such-model")))
    assert snapshot(repository) == before

    def refuse(name):
        raise RuntimeError("load failed")

    (job,) = plan_jobs(repository, warmup_request(group_max=2))
    assert run_job(job, RecordingControl(fail_load=refuse)).status == Status.FAILED
    assert not config_cache.cache_path(repository / "model-v1").exists()
    assert (repository / "model-v1" / "config.pbtxt").read_bytes() == before["model-v1/config.pbtxt"]


def test_an_unchanged_config_is_kept_once_and_not_rewritten(repository):
    apply(repository, warmup_request(group_max=2))
    path = config_cache.cache_path(repository / "model-v1")
    written = path.stat().st_mtime_ns, path.stat().st_ino
    apply(repository, warmup_request(group_max=2))
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == written
