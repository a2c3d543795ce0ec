# Two commands do everything on a fresh clone:
#   make run   - venv, native libtorch backend, models, embedded Triton on a
#                working copy that warms every example model at start, states
#   make test  - unit and integration tests on the real embedded Triton
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Ports of the embedded server that `make run` starts.
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
MODELS := model_repository/model-v1/1/model.pt model_repository/model-v2/1/model.pt model_repository/model-v3/1/model.pt \
	model_repository/text-encoder/1/model.pt model_repository/session-encoder/1/model.pt \
	model_repository/compiled-encoder/1/model.pt
# The suite's integration tests spend much of their time waiting on servers;
# two workers (pytest-xdist, a test file each at a time) halve its time on 2 cores.
TEST_WORKERS ?= 2

.PHONY: run test unit integration test-faults bench docs venv backend models clean

venv: $(VENV)/.installed

# The pinned tools, then this package itself, editable: the helper's model.py,
# the clients, the tests and the benchmarks all import triton_warmup from here,
# and the embedded server's Python stubs run this venv's Python.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Triton's native libtorch backend, built from source once and cached in
# .build/ (keyed by source commits, torch and compiler; libtorch_backend/).
backend: venv
	@$(PY) -m triton_warmup.libtorch_backend

models: $(MODELS)

$(MODELS): triton_warmup/example_models.py model_repository/compiled-encoder/1/model.py $(VENV)/.installed
	$(PY) gen_model.py --model-repository model_repository

# The server warms itself at start (the helper's warm_on_start: all, set in a
# working copy): every model of the example repository (plain, Python with a
# string input, an ensemble, a sequence model, PyTorch 2), group sizes 1..4;
# triton-warmup --start-report waits for that warmup and prints its report;
# the traffic watch is on (docs/metrics.md), and the states come with the
# figures the helper publishes on Triton's metrics port.
run: venv backend models
	@$(VENV)/bin/triton-warmup-serve --working-copy --warm-on-start all --watch-traffic --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) -- \
		$(VENV)/bin/triton-warmup-states -u localhost:$(HTTP_PORT) --metrics --metrics-url localhost:$(METRICS_PORT)

test: venv backend
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests

unit: venv
	$(PY) -m pytest tests/unit

integration: venv backend
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests/integration

# The full fault battery: 20 SIGKILL runs, 1000 fuzzed requests per protocol,
# and 30 bad plans with the preflight off (how often tritonserver crashes).
test-faults: venv backend
	WARMUP_KILL_RUNS=20 FUZZ_EXAMPLES=1000 PREFLIGHT_OFF_PLANS=30 $(PY) -m pytest -m faults \
		tests/integration/test_sigkill.py tests/integration/test_fuzz_requests.py tests/integration/test_preflight_stress.py

# On the native libtorch backend: cold vs seed-style vs this project's warmup,
# cost, scaling, specializations (about 2 minutes); how long a replica
# (deploy/entrypoint.sh) takes to become ready (about 3 minutes); how often
# tritonserver dies when a warmup sample fails (about 3 minutes); a range plan
# against a traffic plan; the first request through the example ensemble,
# cold and warmed (about 2 minutes); every warmed shape of four models after
# READY, six conditions on fresh servers, four passes (about 30 minutes); a
# repository in S3; time to READY at scale, with paired restarts (about 30
# minutes); what clients see while a serving model is re-warmed, in place
# and by a reload (about 20 minutes); torch.compile models cold, warmed and
# restarted (the example, a larger one and issue 38's, about 11 minutes);
# warm_on_start against the client trigger, with what /v2/health/ready says
# meanwhile (about 4 minutes); the traffic watch's cold share against the
# share sent, and its cost (about 4 minutes).
# Results in bench/results/; last, first_request.png, drawn from the JSON
# results alone (python -m bench.figures redraws it without measuring).
bench: venv backend models
	$(PY) -m bench.warmup_benchmark
	$(PY) -m bench.replica_benchmark
	$(PY) -m bench.warmup_crash_rate
	$(PY) -m bench.preflight_cost
	$(PY) -m bench.traffic_benchmark
	$(PY) -m bench.ensemble_benchmark
	$(PY) -m bench.warm_stays_warm
	$(PY) -m bench.s3_benchmark
	$(PY) -m bench.scale_benchmark
	$(PY) -m bench.rewarm_under_traffic
	$(PY) -m bench.pytorch2_benchmark
	$(PY) -m bench.pytorch2_benchmark --model compiled-attention
	$(PY) -m bench.pytorch2_benchmark --model compiled-tokens --group-max 12
	$(PY) -m bench.start_benchmark
	$(PY) -m bench.watch_benchmark
	$(PY) -m bench.adapt_benchmark
	$(PY) -m bench.helper_overhead
	$(PY) -m bench.figures

# Run every command the README and the docs show (blocks marked
# <!-- shown: ... -->) and write what they printed into the docs;
# make test checks them (tests/integration/test_docs.py).
docs: venv backend models
	$(PY) -m pytest tests/integration/test_docs.py --write-docs

clean:
	rm -rf $(VENV) .build .pytest_cache $(MODELS)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
