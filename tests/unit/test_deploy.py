"""The deployment files: lint, offline validation and the promises they make
to each other (the image holds what the entrypoint and the probes run, the
helper's start plan is the ConfigMap's and the probes wait for its models, a
rolling update never goes below the wanted number of ready pods).

No Docker engine or Kubernetes cluster runs here; the entrypoint itself runs
against the real embedded server in tests/integration/test_entrypoint.py.
"""

import copy
import json
import pathlib
import re
import shlex
import tomllib
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from triton_warmup.embedded import container as local_container
from triton_warmup.embedded.container import configmap_plan, deployment_container, manifests, start_plan_mount
from triton_warmup.client.plan_file import load_plan

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = PROJECT_ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
BIN = pathlib.Path(sys.executable).parent
# The oldest and the newest Kubernetes release kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.25.0", "1.37.0"]


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


def image_env():
    """The final stage's ENV settings."""
    return dict(word.split("=", 1) for instruction, arguments in dockerfile_instructions()
                if instruction == "ENV" for word in shlex.split(arguments))


def console_scripts():
    """The commands ``pip install`` of this package puts on PATH."""
    return set(tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def test_every_path_the_image_copies_is_in_the_checkout():
    for source in image_paths():
        assert ":" in source or (PROJECT_ROOT / source).exists(), source


def test_the_image_installs_the_package_and_adds_the_helper_as_a_user_would():
    landed = image_paths()
    runs = [arguments for instruction, arguments in dockerfile_instructions() if instruction == "RUN"]
    # The package's sources land in one folder, which pip installs: the
    # helper's model.py then imports triton_warmup from the image's Python.
    project = pathlib.PurePosixPath(landed["pyproject.toml"]).parent
    assert landed["triton_warmup"] == str(project / "triton_warmup")
    assert landed["model_repository/warmup_helper"] == str(project / "model_repository" / "warmup_helper")
    assert any(f"pip install --no-cache-dir --no-deps {project}" in run for run in runs), runs
    # The helper comes from the installed package, by the documented command,
    # into the repository the server serves; the example stage drops its copy.
    repository = image_env()["MODEL_REPOSITORY"]
    (install,) = [run for run in runs if run.startswith(f"triton-warmup-install-helper {repository} ")]
    assert landed["example-models:/build/model_repository"] == repository
    assert any("rm -r model_repository/warmup_helper" in run for run in runs)
    # With warm_on_start naming the example plan, which the image holds under
    # the start plan's file name: install-helper copies it into the helper's
    # folder by that name, where the Deployment mounts its own plan.
    words = shlex.split(install)
    start_plan = pathlib.PurePosixPath(words[words.index("--warm-on-start") + 1])
    assert landed[str(local_container.IMAGE_START_PLAN_SOURCE.relative_to(PROJECT_ROOT))] == str(start_plan)
    assert local_container.image_start_plan() == pathlib.PurePosixPath(repository, "warmup_helper", start_plan.name)
    # LocalContainer (tests/integration/test_entrypoint.py) maps this path.
    assert local_container.IMAGE_MODEL_REPOSITORY == repository


def test_the_entrypoint_and_probes_run_what_the_image_holds():
    landed = image_paths()
    entrypoint = next(json.loads(arguments) for instruction, arguments in dockerfile_instructions()
                      if instruction == "ENTRYPOINT")
    assert entrypoint == [landed["deploy/entrypoint.sh"]]
    assert ENTRYPOINT.stat().st_mode & 0o111, "the entrypoint must be executable"
    used = set(re.findall(r"\btriton-warmup[a-z-]*", ENTRYPOINT.read_text()))
    assert used and used <= console_scripts(), used - console_scripts()
    for probe in ("startupProbe", "readinessProbe"):
        command = deployment_container()[probe]["exec"]["command"]
        assert command[0] in console_scripts(), probe


def test_deploy_requirements_use_the_pins_the_tests_run_with():
    def pins(path):
        lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
        return {re.sub(r"\[.*\]", "", line.split("==")[0]).lower(): line.split("==")[1] for line in lines if line}

    deploy_pins, project_pins = pins(DEPLOY / "requirements.txt"), pins(PROJECT_ROOT / "requirements.txt")
    assert deploy_pins and all(project_pins.get(name) == version for name, version in deploy_pins.items()), (
        deploy_pins, project_pins)


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
    # The startup probe's window is the only bound on server start + start
    # warmup (nothing in the container times them out); the rollout waits
    # at least as long before it calls a new pod stuck.
    window = startup["periodSeconds"] * startup["failureThreshold"]
    assert deployment["spec"]["progressDeadlineSeconds"] >= window
    # A probe answers within its own timeout: --timeout bounds its calls.
    for probe in (startup, readiness):
        command = probe["exec"]["command"]
        assert float(command[command.index("--timeout") + 1]) < probe["timeoutSeconds"]


def test_the_helper_warms_the_configmaps_plan_and_the_probes_wait_for_it():
    documents = manifests()
    volumes = {volume["name"]: volume for volume in documents["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    mount = start_plan_mount()
    assert volumes[mount["name"]]["configMap"]["name"] == documents["ConfigMap"]["metadata"]["name"]
    # One key, mounted as one file over the image's start plan (a mount of
    # the whole volume onto the helper's folder would hide the helper).
    (key,) = documents["ConfigMap"]["data"]
    plan_path = pathlib.PurePosixPath(mount["mountPath"])
    assert mount["subPath"] == key == plan_path.name and mount["readOnly"] is True
    assert plan_path.parent == pathlib.PurePosixPath(image_env()["MODEL_REPOSITORY"], "warmup_helper")
    http_port = next(port["containerPort"] for port in deployment_container()["ports"] if port["name"] == "http")
    for probe in ("startupProbe", "readinessProbe"):
        command = deployment_container()[probe]["exec"]["command"]
        assert command[command.index("--plan") + 1] == str(plan_path), probe
        assert command[command.index("-u") + 1] == f"localhost:{http_port}", probe
    assert deployment_container()["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert deployment_container()["resources"]["requests"].keys() >= {"cpu", "memory"}


def test_the_deployment_sets_no_variable_that_nothing_reads():
    """The entrypoint no longer reads a plan or warmup timeouts: a variable
    for them would only mislead whoever tunes the Deployment."""
    read = ENTRYPOINT.read_text() + DOCKERFILE.read_text()
    for item in deployment_container().get("env", []):
        assert item["name"] in read, item["name"]


def test_the_compile_cache_is_a_volume_where_the_image_points_torch():
    """Inductor's cache outlives a container (docs/pytorch2.md): the image's
    TORCHINDUCTOR_CACHE_DIR is a mounted volume, owned by the server's user
    when nothing is mounted."""
    documents = manifests()
    volumes = {volume["name"]: volume for volume in documents["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in deployment_container()["volumeMounts"]}
    image_env = " ".join(arguments for instruction, arguments in dockerfile_instructions() if instruction == "ENV")
    cache_dir = image_env.split("TORCHINDUCTOR_CACHE_DIR=")[1].split()[0]
    assert cache_dir in mounts and "emptyDir" in volumes[mounts[cache_dir]]
    runs = " ".join(arguments for instruction, arguments in dockerfile_instructions() if instruction == "RUN")
    assert "triton-warmup-install-runtime /opt/tritonserver/backends/pytorch" in runs
    assert f"chown 1000:1000 {cache_dir}" in runs


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
