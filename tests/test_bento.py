"""The built Bento: what it packs, its Dockerfile, and serving it the way its image does.

``bentoml build`` runs in the private test store, which contains ``spot_lstm`` from the small test
model. The image runs ``bentoml serve`` on the Bento folder, with the packed model under
``models/`` and a ``BENTOML_HOME`` without models; the tests do the same without a container.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service_process import HOST, ROOT, free_port, serving

SERIES = "eu-west-1a/m5.large/Linux/UNIX"
BENTOML = [sys.executable, "-m", "bentoml"]
#: Modules the service imports; each must be packed.
SERVICE_MODULES = ("serving", "schemas", "http_limits", "batching", "network", "store", "config",
                   "forecast", "grid", "windows", "model", "series")


def bentoml_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
                cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*BENTOML, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def bento_tag(small_model_tag) -> str:
    built = bentoml_cli("build", "-o", "tag")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    match = re.search(r"__tag__:(\S+)", built.stdout)
    assert match, built.stdout[-2000:]
    return match.group(1)


@pytest.fixture(scope="module")
def bento_info(bento_tag) -> dict:
    described = bentoml_cli("get", bento_tag, "-o", "json")
    assert described.returncode == 0, described.stderr[-2000:]
    return json.loads(described.stdout)


@pytest.fixture(scope="module")
def packed_model_tag(bento_info) -> str:
    tags = [model["tag"] for service in bento_info["services"] for model in service["models"]]
    assert len(tags) == 1, tags
    return tags[0]


@pytest.fixture(scope="module")
def bento_folder(bento_tag, store_path) -> Path:
    name, version = bento_tag.split(":")
    return store_path / "bentos" / name / version


@pytest.fixture(scope="module")
def exported_folder(bento_tag, tmp_path_factory) -> Path:
    """The Bento exported to an archive and unpacked, as ``bentoml containerize`` lays it out."""
    work = tmp_path_factory.mktemp("exported")
    archive = work / "bento.tar"
    exported = bentoml_cli("export", bento_tag, str(archive))
    assert exported.returncode == 0, exported.stderr[-2000:]
    folder = work / "bento"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder


def image_environment(bento_info: dict, home: Path) -> dict[str, str]:
    """The environment the image sets: the Bento's envs and a BENTOML_HOME without models."""
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": str(home),
           "BENTOML_HOME": str(home / "bentoml")}
    for item in bento_info.get("envs") or []:
        env[item["name"]] = str(item["value"])
    return env


# Contents -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_bento_lists_model(bento_info, packed_model_tag):
    assert packed_model_tag.startswith("spot_lstm:")
    assert bento_info["name"] == "ec2-spot-forecast"
    assert bento_info["service"] == "service:SpotForecast"


@pytest.mark.slow
def test_bento_packs_service_code(bento_folder):
    source = bento_folder / "src"
    assert (source / "service.py").is_file()
    for module in SERVICE_MODULES:
        assert (source / "src" / "spot_forecast" / f"{module}.py").is_file(), module
    assert (source / "src" / "spot_forecast" / "ui" / "index.html").is_file()


@pytest.mark.slow
def test_bento_leaves_out_data_tests_venv(bento_folder):
    packed = [path.relative_to(bento_folder) for path in bento_folder.rglob("*")]
    for unwanted in ("data", "tests", ".venv", ".git", "__pycache__"):
        assert [path for path in packed if unwanted in path.parts] == [], unwanted
    assert [path for path in packed if path.suffix in (".xz", ".parquet", ".bento")] == []


@pytest.mark.slow
def test_bento_pins_serving_requirements(bento_folder):
    packed = (bento_folder / "env" / "python" / "requirements.txt").read_text().splitlines()
    for line in read_requirements(ROOT / "requirements-serve.txt"):
        assert line in packed


@pytest.mark.slow
def test_dockerfile_from_expose_entrypoint(bento_folder):
    dockerfile = (bento_folder / "env" / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    assert re.search(r"^EXPOSE 3000$", dockerfile, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \[ "/home/bentoml/bento/env/docker/entrypoint\.sh" \]$',
                     dockerfile, re.MULTILINE)
    assert re.search(r"^ENV PYTHONPATH=", dockerfile, re.MULTILINE)
    assert (bento_folder / "env" / "docker" / "entrypoint.sh").is_file()


@pytest.mark.slow
def test_export_contains_model(exported_folder, packed_model_tag):
    name, version = packed_model_tag.split(":")
    model_folder = exported_folder / "models" / name / version
    assert (model_folder / "model.keras").is_file()
    assert (model_folder / "scaler.joblib").is_file()
    assert (model_folder / "history.parquet").is_file()


# Serving the built Bento --------------------------------------------------------------------


@pytest.mark.slow
def test_built_bento_serves_without_store(exported_folder, bento_info, packed_model_tag,
                                          tmp_path):
    env = image_environment(bento_info, tmp_path)
    # The worker imports spot_forecast from the Bento's own copy, as in the image, not from the
    # project's editable install.
    located = subprocess.run(
        [sys.executable, "-c", "import spot_forecast; print(spot_forecast.__file__)"],
        cwd=exported_folder / "src", env=env, capture_output=True, text=True, timeout=60,
    )
    assert located.returncode == 0, located.stderr[-2000:]
    assert Path(located.stdout.strip()).is_relative_to(exported_folder)

    with serving(str(exported_folder), tmp_path / "serve.log", env=env,
                 cwd=exported_folder) as service:
        response = httpx.post(service.url + "/forecast",
                              json={"series_id": SERIES, "horizon": 6}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == packed_model_tag
    assert len(response.json()["steps"]) == 6
    assert list((tmp_path / "bentoml" / "models").glob("*/*")) == []


@pytest.mark.slow
def test_service_without_model_fails_naming_tag(bento_info, tmp_path):
    env = image_environment(bento_info, tmp_path)
    env.pop("PYTHONPATH")
    started = bentoml_cli("serve", "service:SpotForecast", "--host", HOST,
                          "--port", str(free_port()), env=env, timeout=120)
    assert started.returncode != 0
    assert "spot_lstm:latest" in started.stdout + started.stderr


@pytest.mark.slow
def test_bento_without_model_fails_naming_tag(exported_folder, bento_info, packed_model_tag,
                                              tmp_path):
    folder = tmp_path / "bento"
    shutil.copytree(exported_folder, folder, ignore=shutil.ignore_patterns("models"))
    started = bentoml_cli("serve", str(folder), "--host", HOST, "--port", str(free_port()),
                          env=image_environment(bento_info, tmp_path), timeout=120, cwd=folder)
    assert started.returncode != 0
    assert packed_model_tag in started.stdout + started.stderr


# Container image ----------------------------------------------------------------------------


def container_backend() -> tuple[str | None, str]:
    """Return a container engine whose ``info`` command succeeds, or None and the reasons."""
    reasons = []
    for backend in ("docker", "podman", "buildah"):
        if shutil.which(backend) is None:
            reasons.append(f"no {backend} client")
            continue
        probe = subprocess.run([backend, "info"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return backend, ""
        output_lines = (probe.stderr or probe.stdout).strip().splitlines() or ["no output"]
        reasons.append(f"`{backend} info` failed: {output_lines[-1]}")
    return None, "; ".join(reasons)


@pytest.mark.slow
def test_containerize_builds_image(bento_tag):
    backend, reason = container_backend()
    if backend is None:
        pytest.skip(f"no working container engine: {reason}")
    image = f"ec2-spot-forecast-test:{bento_tag.split(':')[1]}"
    # Installs TensorFlow into the image from the package index, so this takes minutes.
    built = bentoml_cli("containerize", bento_tag, "--backend", backend, "-t", image,
                        timeout=3600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    inspected = subprocess.run([backend, "image", "inspect", image], capture_output=True,
                               text=True, timeout=60)
    assert inspected.returncode == 0, inspected.stderr
    config = json.loads(inspected.stdout)[0]["Config"]
    assert "3000/tcp" in config["ExposedPorts"]
    assert config["Entrypoint"] == ["/home/bentoml/bento/env/docker/entrypoint.sh"]


# Pinned dependencies ------------------------------------------------------------------------


def read_requirements(path: Path) -> list[str]:
    """The requirement lines of a pip requirements file, without comments and blank lines."""
    lines = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def test_serve_requirements_match_lock():
    locked = {}
    for line in read_requirements(ROOT / "requirements.lock"):
        requirement = Requirement(line)
        locked[canonicalize_name(requirement.name)] = str(requirement.specifier)
    serve = [Requirement(line) for line in read_requirements(ROOT / "requirements-serve.txt")]
    assert serve
    for requirement in serve:
        name = canonicalize_name(requirement.name)
        assert str(requirement.specifier).startswith("=="), f"{requirement} is not pinned"
        assert name in locked, f"{requirement.name} is not in requirements.lock"
        assert str(requirement.specifier) == locked[name], requirement.name
