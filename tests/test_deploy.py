"""deploy/: the recipes parse, validate against their schemas, lint clean and agree with each other."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import dask
import pytest
import yaml

from polarxr.cluster import get_client

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
TORCH_PIN = next(line for line in (ROOT / "requirements.lock").read_text().splitlines()
                 if line.startswith("torch=="))


def _tool(name: str) -> str | None:
    """A command-line tool from this environment (test extra) or the PATH."""
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def _dotted(tree: dict, prefix: str = "") -> dict:
    """{"distributed": {"comm": {"tls": {"ca-file": x}}}} -> {"distributed.comm.tls.ca-file": x}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        out.update(_dotted(value, name) if isinstance(value, dict) else {name: value})
    return out


def _env_names(tree: dict) -> dict:
    """Dask config keys as dask's environment variables name them, less the DASK_ prefix."""
    return {k.upper().replace(".", "__").replace("-", "_"): v for k, v in _dotted(tree).items()}


# --- docker compose --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.tls.yml"])
def test_compose_files_follow_the_compose_spec(name, tmp_path):
    checker = _tool("check-jsonschema")
    if checker is None:
        pytest.skip("check-jsonschema (test extra) not installed")
    run = [checker, "--builtin-schema", "vendor.compose-spec"]
    ok = subprocess.run([*run, str(DEPLOY / name)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the validator does reject a service with an unknown key
    bad = _load(DEPLOY / name)
    bad["services"]["worker"]["replica"] = 3
    (tmp_path / name).write_text(yaml.safe_dump(bad))
    assert subprocess.run([*run, str(tmp_path / name)], capture_output=True).returncode != 0


def test_compose_recipe_publishes_only_the_scheduler_on_loopback():
    compose = _load(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"scheduler", "worker", "gpu-worker", "polarxr"}
    assert services["scheduler"]["command"][:2] == ["dask", "scheduler"]
    assert "8786" in services["scheduler"]["command"]
    assert services["scheduler"]["ports"] == ["${POLARXR_BIND:-127.0.0.1}:8786:8786",
                                              "${POLARXR_BIND:-127.0.0.1}:8787:8787"]
    assert [name for name, svc in services.items() if "ports" in svc] == ["scheduler"]
    assert services["worker"]["command"][:3] == ["dask", "worker", "scheduler:8786"]
    assert "--no-dashboard" in services["worker"]["command"]
    assert services["worker"]["deploy"]["replicas"] == "${POLARXR_WORKERS:-2}"
    assert services["gpu-worker"]["command"][:3] == ["dask", "cuda", "worker"]
    assert services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["polarxr"]["entrypoint"] == ["polarxr"]
    for name, svc in services.items():
        assert svc["image"].startswith("${POLARXR_") and "polarxr:0.1.0" in svc["image"], name
        dockerfile = DEPLOY.parent / svc["build"]["dockerfile"]
        assert dockerfile.is_file(), name
        # the shared data folder sits at the same absolute path inside as outside
        assert svc["volumes"] == ["${POLARXR_DATA:-/srv/polarxr}:${POLARXR_DATA:-/srv/polarxr}"], name


def test_compose_config_with_the_docker_cli(tmp_path):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose plugin not installed (the compose-spec schema check above still runs)")
    env = dict(os.environ, POLARXR_DATA=str(tmp_path))
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.tls.yml"]):
        args = [a for f in files for a in ("-f", str(DEPLOY / f))]
        done = subprocess.run([docker, "compose", *args, "--profile", "gpu", "--profile", "cli", "config"],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr


def test_tls_settings_are_the_same_in_every_recipe():
    """deploy/dask-tls.yaml, the compose TLS overlay and the operator's ConfigMap set the same keys."""
    expected = {k: Path(v).name if isinstance(v, str) and v.endswith(".pem") else v
                for k, v in _env_names(_load(DEPLOY / "dask-tls.yaml")).items()}
    assert expected["DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] is True

    def normalise(env: dict) -> dict:
        return {k.removeprefix("DASK_"): (Path(v).name if v.endswith(".pem") else
                                          True if v == "true" else v) for k, v in env.items()}

    overlay = _load(DEPLOY / "docker-compose.tls.yml")
    main = _load(DEPLOY / "docker-compose.yml")
    assert set(overlay["services"]) == set(main["services"])
    for name, svc in overlay["services"].items():
        env = {k: v for k, v in svc["environment"].items() if k.startswith("DASK_")}
        assert normalise(env) == expected, name
        assert svc["volumes"] == ["${POLARXR_TLS_DIR:-./tls}:/tls:ro"], name
    assert overlay["services"]["polarxr"]["environment"]["POLARXR_SCHEDULER"] == "tls://scheduler:8786"
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "daskcluster.yaml").read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    assert normalise(config_map["data"]) == expected


def test_dask_tls_config_file_connects_to_a_real_tls_cluster(real_tls_scheduler):
    """deploy/dask-tls.yaml, paths pointed at real certificates, is all a client needs (no --tls-dir)."""
    address, tls_dir = real_tls_scheduler
    text = (DEPLOY / "dask-tls.yaml").read_text().replace("/etc/polarxr/tls", str(tls_dir))
    with dask.config.set(_dotted(yaml.safe_load(text))):
        with get_client(scheduler=address.removeprefix("tls://")) as client:
            assert client.scheduler.address == address
            assert client.submit(sum, [1, 2, 3]).result() == 6


# --- Kubernetes --------------------------------------------------------------------------------------


def test_helm_values_run_polarxr_images_with_the_chart_commands():
    values = _load(DEPLOY / "helm" / "values.yaml")
    assert values["scheduler"]["servicePort"] == 8786 and values["scheduler"]["serviceType"] == "ClusterIP"
    assert values["scheduler"]["image"]["repository"].endswith("/polarxr")
    worker = values["worker"]
    assert worker["image"]["repository"].endswith("/polarxr") and worker["replicas"] >= 1
    assert worker["image"]["dask_worker"] == "dask-worker"
    assert worker["resources"]["limits"]["cpu"] == "1"
    assert worker["mounts"]["volumeMounts"][0]["mountPath"] == "/data"
    [gpu] = values["additional_worker_groups"]
    assert gpu["image"]["repository"].endswith("/polarxr-cuda")
    assert gpu["image"]["dask_worker"] == "dask-cuda-worker"
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert values["jupyter"]["enabled"] is False
    # the chart runs `dask-scheduler` and worker.image.dask_worker: the images ship those commands
    for name in ("dask-scheduler", "dask-worker", "dask-cuda-worker"):
        assert os.access(DEPLOY / "bin" / name, os.X_OK), name


@pytest.mark.parametrize("shim, usage", [("dask-scheduler", "dask scheduler"), ("dask-worker", "dask worker")])
def test_chart_command_shims_run_the_dask_cli(shim, usage):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run([str(DEPLOY / "bin" / shim), "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and f"Usage: {usage}" in done.stdout, done.stderr


def test_operator_manifest_is_a_tls_only_cluster():
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "daskcluster.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "ConfigMap", "DaskCluster", "DaskWorkerGroup"]
    pvc, config_map, cluster, gpu = docs
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    scheduler = cluster["spec"]["scheduler"]
    [container] = scheduler["spec"]["containers"]
    assert container["args"][:2] == ["dask", "scheduler"] and container["image"].endswith("/polarxr:0.1.0")
    assert {p["containerPort"] for p in container["ports"]} == {8786, 8787}
    assert scheduler["service"]["type"] == "ClusterIP"
    assert {p["port"] for p in scheduler["service"]["ports"]} == {8786, 8787}
    [worker] = cluster["spec"]["worker"]["spec"]["containers"]
    [gpu_worker] = gpu["spec"]["worker"]["spec"]["containers"]
    assert worker["args"][:3] == ["dask", "worker", "tls://polarxr-scheduler:8786"]
    assert gpu_worker["args"][:4] == ["dask", "cuda", "worker", "tls://polarxr-scheduler:8786"]
    assert gpu["spec"]["cluster"] == cluster["metadata"]["name"] == "polarxr"
    assert gpu_worker["image"].endswith("/polarxr-cuda:0.1.0")
    assert gpu_worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    for c in (container, worker, gpu_worker):
        assert c["envFrom"] == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]
        assert {"name": "tls", "mountPath": "/tls", "readOnly": True} in c["volumeMounts"]


# --- container images --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pin_torch_install_the_package_and_lint_clean(name):
    text = (DEPLOY / name).read_text()
    assert re.search(rf"pip install {re.escape(TORCH_PIN)}\b", text), f"{name} must install {TORCH_PIN}"
    if name == "Dockerfile":
        assert "--index-url https://download.pytorch.org/whl/cpu" in text
        assert re.search(r"^RUN pip install -c requirements\.lock \. && pip check$", text, re.M)
    else:
        assert re.search(r'^RUN pip install -c requirements\.lock "\.\[gpu\]" && pip check$', text, re.M)
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"^USER 1000:1000$", text, re.M)  # not root
    for line in re.findall(r"^COPY (.+) \S+$", text, re.M):  # every copied source exists in the repo
        for src in line.split():
            assert (ROOT / src).exists(), f"{name}: COPY {src}"
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed")
    done = subprocess.run([hadolint, str(DEPLOY / name)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- SLURM -------------------------------------------------------------------------------------------


def _job_script(tmp_path: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, str(DEPLOY / "slurm" / "slurm_cluster.py"), "--dry-run",
                           "--log-directory", str(tmp_path / "logs"), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(importlib.util.find_spec("dask_jobqueue") is None, reason="dask-jobqueue not installed")
def test_slurm_worker_jobs(tmp_path):
    gpu = _job_script(tmp_path, "--cores", "8", "--memory", "32GB", "--gpus-per-job", "1", "--partition", "gpu",
                      "--account", "proj1", "--venv", "/shared/envs/polarxr")
    assert "#SBATCH --gres=gpu:1" in gpu and "#SBATCH -p gpu" in gpu and "#SBATCH -A proj1" in gpu
    assert "source /shared/envs/polarxr/bin/activate" in gpu
    assert "distributed.cli.dask_worker tcp://" in gpu and "--nthreads 8" in gpu and "--nworkers" not in gpu
    from polarxr.tls import make_certificates

    make_certificates(tmp_path / "tls")
    cpu = _job_script(tmp_path, "--cores", "4", "--memory", "16GB", "--tls-dir", str(tmp_path / "tls"))
    assert "--gres" not in cpu and "--nworkers 4" in cpu and "--nthreads 1" in cpu
    assert "dask_worker tls://" in cpu and f"--tls-ca-file {tmp_path / 'tls' / 'ca.pem'}" in cpu


def test_sbatch_example_calls_the_script_with_valid_options():
    text = (DEPLOY / "slurm" / "polarxr.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(DEPLOY / "slurm" / "polarxr.sbatch")]).returncode == 0
    assert re.search(r"^#SBATCH --time=", text, re.M)
    joined = text.replace("\\\n", " ")
    [call] = [line for line in joined.splitlines() if "slurm_cluster.py" in line and not line.startswith("#")]
    argv = shlex.split(call.split("slurm_cluster.py", 1)[1])
    spec = importlib.util.spec_from_file_location("slurm_cluster", DEPLOY / "slurm" / "slurm_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.parse_args(argv)  # argparse exits on an unknown option
    assert args.jobs == 8 and args.tls_dir == "$DATA/tls" and args.command[:2] == ["polarxr", "predict"]
    assert "--checkpoint" in args.command and "--out" in args.command


def test_readme_covers_every_recipe():
    readme = (DEPLOY / "README.md").read_text()
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.parent.name != "bin" and path.name != "README.md":
            assert path.name in readme, f"deploy/README.md does not mention {path.relative_to(DEPLOY)}"
    for heading in ("## Where the data must live", "## TLS", "## Sizing"):
        assert heading in readme
    assert "--scheduler" in readme and "s3://" in readme
