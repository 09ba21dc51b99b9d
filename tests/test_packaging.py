"""What ships: the wheel and sdist carry the built editor, the container recipe, and the App
Engine configuration (which must name only settings that exist)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

from collab.config import Settings, instance_local_store_problem
from tests.conftest import require_service
from tests.servers import ROOT, free_port

APP_ENGINE_FLEX_KEYS = {  # the app.yaml reference of App Engine flexible
    "runtime", "env", "service", "entrypoint", "runtime_config", "build_env_variables",
    "env_variables", "beta_settings", "network", "resources", "liveness_check", "readiness_check",
    "automatic_scaling", "manual_scaling", "service_account", "inbound_services", "handlers",
    "skip_files", "vpc_access_connector",
}
NESTED_KEYS = {
    "network": {"name", "subnetwork_name", "instance_tag", "forwarded_ports", "session_affinity",
                "instance_ip_mode"},
    "beta_settings": {"cloud_sql_instances"},
    "resources": {"cpu", "memory_gb", "disk_size_gb", "volumes"},
    "liveness_check": {"path", "check_interval_sec", "timeout_sec", "failure_threshold",
                       "success_threshold", "initial_delay_sec"},
    "readiness_check": {"path", "check_interval_sec", "timeout_sec", "failure_threshold",
                        "success_threshold", "app_start_timeout_sec"},
    "automatic_scaling": {"min_num_instances", "max_num_instances", "cool_down_period_sec",
                          "cpu_utilization", "target_concurrent_requests"},
}


def app_yaml() -> dict[str, object]:
    return dict(yaml.safe_load((ROOT / "app.yaml").read_text()))


def test_app_yaml_names_only_settings_that_exist() -> None:
    config = app_yaml()
    assert set(config) <= APP_ENGINE_FLEX_KEYS, set(config) - APP_ENGINE_FLEX_KEYS
    for section, allowed in NESTED_KEYS.items():
        if section in config:
            assert set(config[section]) <= allowed, (section, set(config[section]) - allowed)  # type: ignore[arg-type]
    assert set(config["automatic_scaling"]["cpu_utilization"]) <= {"target_utilization"}  # type: ignore[index]
    variables = config["env_variables"]
    assert isinstance(variables, dict)
    known = {option.env for _name, option, _default in Settings.options()}
    assert set(variables) <= known, set(variables) - known
    Settings.from_env({k: str(v) for k, v in variables.items()})  # and every value parses


def test_app_yaml_deploys_the_container_on_several_instances_that_share_documents() -> None:
    config = app_yaml()
    assert config["runtime"] == "custom" and config["env"] == "flex"
    assert "entrypoint" not in config  # the Dockerfile's CMD starts the server
    assert config["automatic_scaling"]["min_num_instances"] >= 2  # type: ignore[index]
    assert config["liveness_check"]["path"] == "/liveness_check"  # type: ignore[index]
    assert config["readiness_check"]["path"] == "/readiness_check"  # type: ignore[index]
    variables = {k: str(v) for k, v in config["env_variables"].items()}  # type: ignore[union-attr]
    settings = Settings.from_env(variables)
    assert settings.store.startswith("postgresql://") and settings.redis
    assert instance_local_store_problem(settings, {"GAE_INSTANCE": "x"}) is None
    assert (ROOT / "Dockerfile").is_file()


def test_the_dockerfile_starts_collab_with_options_that_exist() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM node:" in text and "FROM python:" in text  # multi-stage
    assert "\nUSER collab\n" in text  # not root
    command = text[text.index("CMD "):]
    assert "collab serve --port" in command
    variables = set(re.findall(r"\b(COLLAB_[A-Z_]+)=", text))
    known = {option.env for _name, option, _default in Settings.options()}
    assert variables and variables <= known


@pytest.mark.timeout(1800)
def test_the_image_builds_where_docker_runs(tmp_path: Path) -> None:
    if shutil.which("docker") is None:
        pytest.skip("Docker unavailable: no docker client on this machine")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("Docker unavailable: no Docker engine runs here (docker info fails)")
    tag = f"collab-test:{int(time.time())}"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=1500)
    try:
        user = subprocess.run(["docker", "run", "--rm", tag, "id", "-u"], capture_output=True, text=True,
                              check=True, timeout=120).stdout.strip()
        assert user != "0"
        listed = subprocess.run(["docker", "run", "--rm", tag, "python", "-c",
                                 "from collab.config import Settings; print(Settings().editor_dir)"],
                                capture_output=True, text=True, check=True, timeout=120).stdout
        assert "site-packages/collab/web" in listed
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=120)


def clean_checkout(into: Path) -> Path:
    """HEAD exactly as committed: what CI, a release job or a user's clone starts from."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout to build from")
    source = into / "checkout"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"],
                             capture_output=True, check=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True, timeout=60)
    return source


def fetch(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.geturl(), response.read()


@pytest.mark.node
@pytest.mark.timeout(900)  # npm ci, an editor build, an sdist, a wheel and a fresh venv
def test_the_wheel_from_a_clean_checkout_serves_the_editor_from_any_directory(tmp_path: Path) -> None:
    if shutil.which("npm") is None:
        require_service("npm", "building the editor for the wheel needs Node.js and npm")
    source = clean_checkout(tmp_path)
    assert not (source / "web" / "dist").exists()
    out = tmp_path / "dist"
    # sdist first, then the wheel from the sdist: the path `pip install collab-X.tar.gz` takes.
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(source)], check=True,
                   capture_output=True, timeout=900)
    [sdist], [wheel] = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    with tarfile.open(sdist) as archive:
        assert any(n.endswith("/web/dist/index.html") for n in archive.getnames())
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "collab/web/index.html" in names and any(n.startswith("collab/web/assets/") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True,
                   capture_output=True, timeout=900)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([str(venv / "bin" / "collab"), "serve", "--port", str(port)],
                              cwd=elsewhere, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _url, body = fetch(base + "/readiness_check")
                break
            except OSError:
                running = server.poll() is None and time.monotonic() < deadline
                assert running, (tmp_path / "server.log").read_text()
                time.sleep(0.1)
        assert status == 200 and body.startswith(b"ready: the editor")
        status, _url, page = fetch(base + "/d/packaged")
        assert status == 200 and b"<script" in page
        assert fetch(base + "/")[0] == 200
        asset = page.split(b'src="', 1)[1].split(b'"', 1)[0].decode()  # relative to the app's root
        status, _url, script = fetch(urllib.request.urljoin(base + "/", asset))
        assert status == 200 and len(script) > 10_000
        assert (elsewhere / "data" / "collab.db").is_file()  # the default store, where it runs
    finally:
        server.terminate()
        server.wait(15)
        log.close()
    assert "no editor" not in (tmp_path / "server.log").read_text()
