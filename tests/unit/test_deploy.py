"""The deployment files: lint, offline validation and the promises they make
to each other (the image holds what the entrypoint and the probes run, the
probes wait for the models the entrypoint warms, a rolling update never goes
below the wanted number of ready pods).

No Docker engine or Kubernetes cluster runs here; the entrypoint itself runs
against the real embedded server in tests/integration/test_entrypoint.py.
"""

import ast
import copy
import json
import pathlib
import re
import shlex
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from embedded_triton.container import configmap_plan, deployment_container, manifests
from plan_file import load_plan

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = PROJECT_ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
BIN = pathlib.Path(sys.executable).parent
# The oldest and the newest Kubernetes release kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.25.0", "1.37.0"]
# NVIDIA's Triton 24.10 image: Ubuntu 22.04 (glibc 2.35) with Python 3.10.
IMAGE_PYTHON = "3.10"
IMAGE_GLIBC_PLATFORMS = ["manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64"]
# Resolving against PyPI (metadata only) takes a few seconds.
PIP_TIMEOUT_S = 180


def dockerfile_instructions():
    """(instruction, arguments) per line of the Dockerfile, continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def image_paths():
    """Where each path the final stage copies lands in the image, by its
    source ("stage:source" for a COPY --from=stage)."""
    workdir, landed = "/", {}
    for instruction, arguments in dockerfile_instructions():
        if instruction == "FROM":
            workdir, landed = "/", {}
        if instruction == "WORKDIR":
            workdir = arguments
        if instruction != "COPY":
            continue
        words = shlex.split(arguments)
        flags = dict(word[2:].split("=", 1) for word in words if word.startswith("--"))
        *sources, destination = [word for word in words if not word.startswith("--")]
        target = pathlib.PurePosixPath(workdir) / destination
        for source in sources:
            name = source.rstrip("/")
            # Into a folder (a "/" at the end): a file keeps its name, a
            # folder's contents go into it.
            into_folder = destination.endswith("/") or destination == "."
            is_file = not source.endswith("/") and "from" not in flags and (PROJECT_ROOT / name).is_file()
            place = target / pathlib.PurePosixPath(name).name if into_folder and is_file else target
            landed[f"{flags['from']}:{name}" if "from" in flags else name] = str(place)
    return landed


def test_dockerfile_passes_hadolint():
    result = subprocess.run([BIN / "hadolint", DOCKERFILE], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_an_unpinned_base_image(tmp_path):
    unpinned = tmp_path / "Dockerfile"
    unpinned.write_text(DOCKERFILE.read_text().replace("ARG TRITON_RELEASE=24.10", "ARG TRITON_RELEASE=latest")
                        .replace("${TRITON_RELEASE}-py3", "latest"))
    result = subprocess.run([BIN / "hadolint", unpinned], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_both_stages_use_one_pinned_release_of_nvidia_images():
    arguments = dict(arguments.split("=", 1) for instruction, arguments in dockerfile_instructions()
                     if instruction == "ARG" and "=" in arguments)
    release = arguments["TRITON_RELEASE"]
    assert re.fullmatch(r"\d\d\.\d\d", release), release
    bases = [arguments.split()[0] for instruction, arguments in dockerfile_instructions() if instruction == "FROM"]
    assert bases == ["nvcr.io/nvidia/pytorch:${TRITON_RELEASE}-py3", "nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3"]


def test_the_image_holds_every_local_module_the_clients_import():
    landed = image_paths()
    for source in landed:
        assert ":" in source or (PROJECT_ROOT / source).exists(), source
    clients = ["warmup_models.py", "query_model_states.py", "plan_file.py"]
    needed, seen = list(clients), set()
    while needed:
        script = needed.pop()
        seen.add(script)
        for node in ast.walk(ast.parse((PROJECT_ROOT / script).read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                module = f"{name.split('.')[0]}.py"
                if (PROJECT_ROOT / module).exists() and module not in seen:
                    needed.append(module)
    assert seen <= set(landed), f"not copied into the image: {sorted(seen - set(landed))}"
    # plan_file imports the helper's modules from the repository beside it.
    clients_dir = pathlib.PurePosixPath(landed["plan_file.py"]).parent
    assert landed["example-models:/build/model_repository"] == str(clients_dir / "model_repository")


def test_the_entrypoint_and_probes_run_what_the_image_holds():
    landed = image_paths()
    entrypoint = next(json.loads(arguments) for instruction, arguments in dockerfile_instructions()
                      if instruction == "ENTRYPOINT")
    assert entrypoint == [landed["deploy/entrypoint.sh"]]
    assert ENTRYPOINT.stat().st_mode & 0o111, "the entrypoint must be executable"
    for probe in ("startupProbe", "readinessProbe"):
        command = deployment_container()[probe]["exec"]["command"]
        assert command[1] == landed["query_model_states.py"], probe


def test_deploy_requirements_use_the_pins_the_tests_run_with():
    def pins(path):
        lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
        return {re.sub(r"\[.*\]", "", line.split("==")[0]).lower(): line.split("==")[1] for line in lines if line}

    deploy_pins, project_pins = pins(DEPLOY / "requirements.txt"), pins(PROJECT_ROOT / "requirements.txt")
    assert deploy_pins and all(project_pins.get(name) == version for name, version in deploy_pins.items()), (
        deploy_pins, project_pins)


@pytest.mark.timeout(PIP_TIMEOUT_S)
def test_deploy_requirements_resolve_for_the_image_python(tmp_path):
    """pip resolves the pins as binary wheels for the image's Python (PyPI metadata, no install)."""
    platforms = [flag for platform in IMAGE_GLIBC_PLATFORMS for flag in ("--platform", platform)]
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
         "--only-binary=:all:", "--python-version", IMAGE_PYTHON, "--implementation", "cp", *platforms,
         "--target", str(tmp_path / "target"), "--report", str(report), "-r", str(DEPLOY / "requirements.txt")],
        capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"tritonclient", "numpy", "grpcio", "protobuf", "pyyaml", "tqdm"} <= resolved


def test_entrypoint_passes_shellcheck():
    result = subprocess.run([BIN / "shellcheck", ENTRYPOINT], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_offline(version):
    assert {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(
        manifests())
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_rejects_a_misspelt_field():
    broken = copy.deepcopy(manifests()["Deployment"])
    broken["spec"]["strategy"]["rollingUpdate"]["maxUnavailabel"] = 0
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_a_rolling_update_adds_a_ready_pod_before_it_removes_one():
    deployment = manifests()["Deployment"]
    update = deployment["spec"]["strategy"]
    assert update["type"] == "RollingUpdate"
    assert update["rollingUpdate"]["maxUnavailable"] == 0 and update["rollingUpdate"]["maxSurge"] >= 1
    startup, readiness = deployment_container()["startupProbe"], deployment_container()["readinessProbe"]
    # The startup probe's window covers the entrypoint's own limits, so that
    # a hung warmup is ended by the entrypoint (which logs why), not by the kubelet.
    env = {item["name"]: item["value"] for item in deployment_container()["env"]}
    window = startup["periodSeconds"] * startup["failureThreshold"]
    assert window >= int(env["STARTUP_TIMEOUT_S"]) + int(env["WARMUP_TIMEOUT_S"])
    assert deployment["spec"]["progressDeadlineSeconds"] >= window
    # A probe answers within its own timeout: --timeout bounds its calls.
    for probe in (startup, readiness):
        command = probe["exec"]["command"]
        assert float(command[command.index("--timeout") + 1]) < probe["timeoutSeconds"]


def test_the_probes_wait_for_the_models_the_entrypoint_warms():
    documents = manifests()
    env = {item["name"]: item["value"] for item in deployment_container()["env"]}
    (mount,) = deployment_container()["volumeMounts"]
    (volume,) = documents["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert volume["name"] == mount["name"] and volume["configMap"]["name"] == documents["ConfigMap"]["metadata"]["name"]
    (key,) = documents["ConfigMap"]["data"]
    plan_path = f"{mount['mountPath']}/{key}"
    assert env["WARMUP_PLAN"] == plan_path
    http_port = next(port["containerPort"] for port in deployment_container()["ports"] if port["name"] == "http")
    for probe in ("startupProbe", "readinessProbe"):
        command = deployment_container()[probe]["exec"]["command"]
        assert command[command.index("--plan") + 1] == plan_path, probe
        assert command[command.index("-u") + 1] == f"localhost:{http_port}", probe
    assert deployment_container()["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert deployment_container()["resources"]["requests"].keys() >= {"cpu", "memory"}


def test_the_plan_in_the_configmap_is_valid_and_names_models_of_the_repository(tmp_path):
    _, text = configmap_plan()
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(text)
    _, plan = load_plan(plan_path)
    assert plan.models
    for model in plan.models:
        assert (PROJECT_ROOT / "model_repository" / model / "config.pbtxt").is_file(), model


def test_service_pdb_and_autoscaler_point_at_the_deployment():
    documents = manifests()
    labels = documents["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert documents["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert documents["Service"]["spec"]["selector"].items() <= labels.items()
    assert documents["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = documents["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", documents["Deployment"]["metadata"]["name"])
    port_names = {port["name"] for port in deployment_container()["ports"]}
    assert {port["targetPort"] for port in documents["Service"]["spec"]["ports"]} <= port_names
