"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema
(vendored in tests/data/compose-spec.json; its `$comment` says where from), and
against the worker it runs: every PROFILER_* variable must name a real setting
(Settings ignores unknown variables, so a typo would pass silently), the topics
made by the init service must be the ones the worker reads and writes, and the
web port must agree with the healthcheck and the published ports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from stream.devstack import COMPACT_HASH_VALUE_BYTES
from stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"

TOPIC_FIELDS = tuple(name for name in Settings.model_fields if name.startswith("topic_"))
DEFAULT_TOPICS = {Settings.model_fields[name].default for name in TOPIC_FIELDS}
WORKERS = ("worker", "worker-gpu")


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def environment(svc: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, from either compose form (mapping or list)."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def shell_text(value: str | list[str] | None) -> str:
    return " ".join(value) if isinstance(value, list) else value or ""


# --- the schema -----------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))
    errors = [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


def test_the_schema_rejects_what_compose_would_reject() -> None:
    """The vendored schema is live: a misspelt key and a bad condition are caught."""
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))
    broken = json.loads(json.dumps(compose()))
    broken["services"]["worker"]["depends_on"]["kafka"]["condition"] = "service_ready"
    broken["services"]["redis"]["volume"] = ["redis-data:/data"]
    assert len(list(validator.iter_errors(broken))) >= 2


def test_the_vendored_schema_says_where_it_comes_from() -> None:
    note = json.loads(SCHEMA.read_text())["$comment"]
    assert "compose-go" in note
    assert "Apache-2.0" in note


# --- the worker against the settings ---------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "worker",
        pytest.param(
            "worker-gpu",
            marks=pytest.mark.xfail(
                "device" not in Settings.model_fields,
                reason="Settings has no `device` field yet: PROFILER_DEVICE=cuda is ignored",
                strict=True,
            ),
        ),
    ],
)
def test_every_profiler_variable_names_a_setting(name: str) -> None:
    known = {f"PROFILER_{field.upper()}" for field in Settings.model_fields}
    variables = {key for key in environment(service(name)) if key.startswith("PROFILER_")}
    assert variables, f"{name} sets no PROFILER_* variable"
    assert variables - known == set()


@pytest.mark.parametrize("name", WORKERS)
def test_every_profiler_value_is_accepted_by_settings(name: str) -> None:
    env = environment(service(name))
    fields = {
        key.removeprefix("PROFILER_").lower(): value
        for key, value in env.items()
        if key.removeprefix("PROFILER_").lower() in Settings.model_fields
    }
    settings = Settings(**fields)
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.redis_url.startswith("redis://redis:")


def test_init_service_creates_the_default_topics_with_partitions() -> None:
    script = shell_text(service("kafka-init")["command"])
    created = re.findall(r"--create\b.*|^\s*create\b.*", script, flags=re.MULTILINE)
    topics = {}
    for line in created:
        topic = re.search(r"--topic\s+(\S+)", line)
        partitions = re.search(r"--partitions\s+(\d+)", line)
        if topic:
            assert partitions, f"no --partitions for {topic.group(1)}"
            topics[topic.group(1)] = int(partitions.group(1))
    assert set(topics) == DEFAULT_TOPICS
    assert "kafka-topics.sh" in script
    # Workers scale out up to the events topic's partition count.
    assert topics[Settings.model_fields["topic_events"].default] >= 3


@pytest.mark.parametrize("name", WORKERS)
def test_workers_use_the_created_topics_and_one_group(name: str) -> None:
    env = environment(service(name))
    for field in TOPIC_FIELDS:
        assert env[f"PROFILER_{field.upper()}"] == Settings.model_fields[field].default
    assert env["PROFILER_GROUP_ID"] == environment(service("worker"))["PROFILER_GROUP_ID"]


@pytest.mark.parametrize("name", WORKERS)
def test_web_port_matches_healthcheck_and_exposed_port(name: str) -> None:
    svc = service(name)
    port = int(environment(svc)["PROFILER_WEB_PORT"])
    probe = shell_text(svc["healthcheck"]["test"])
    assert re.findall(r":(\d+)/health\b", probe) == [str(port)]
    assert str(port) in [str(p) for p in svc.get("expose", [])]
    targets = [str(p).rsplit(":", 1)[-1].split("/")[0] for p in svc.get("ports", [])]
    assert targets == [str(port)]


@pytest.mark.parametrize("name", WORKERS)
def test_worker_waits_for_its_dependencies(name: str) -> None:
    assert service(name)["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "kafka-init": {"condition": "service_completed_successfully"},
    }
    assert service("kafka-init")["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "healthcheck" in service("kafka") and "healthcheck" in service("redis")


def test_gpu_worker_is_optional_and_reserves_one_gpu() -> None:
    gpu = service("worker-gpu")
    assert gpu["profiles"] == ["gpu"]
    assert environment(gpu)["PROFILER_DEVICE"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "profiles" not in service("worker")  # a plain `docker compose up` needs no GPU
    assert "deploy" not in service("worker")


def test_kafka_runs_in_kraft_mode_and_redis_keeps_an_append_only_file() -> None:
    kafka = environment(service("kafka"))
    assert service("kafka")["image"].startswith("apache/kafka:")
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert "CLUSTER_ID" in kafka
    redis = service("redis")
    assert "--appendonly yes" in shell_text(redis["command"])
    assert any(str(v).endswith(":/data") for v in redis["volumes"])


def test_redis_keeps_profile_hashes_with_vectors_compact() -> None:
    """Two 384-d float32 vectors are 1,536-byte values: the compact encoding must allow them."""
    words = shell_text(service("redis")["command"]).split()
    value = int(words[words.index("--hash-max-listpack-value") + 1])
    assert value >= 4 * 384 == 1536
    assert value == COMPACT_HASH_VALUE_BYTES  # the tests' and benchmarks' redis-server too


# --- the image ---------------------------------------------------------------------


def test_dockerfile_runs_a_non_root_worker_with_a_health_probe() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0].startswith("FROM python:3.11-slim")
    user = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    text = DOCKERFILE.read_text()
    assert "/health" in text.split("HEALTHCHECK", 1)[1]
    assert f"EXPOSE {Settings.model_fields['web_port'].default}" in instructions
    assert instructions[-1] == 'CMD ["profiler", "run"]'


@pytest.mark.parametrize("path", [DOCKERFILE, COMPOSE, ROOT / "README.md"])
def test_every_profiler_variable_a_deployment_file_names_is_a_setting(path: Path) -> None:
    """Comments included: the Dockerfile told of PROFILER_ENCODER, which nothing reads
    (the setting is PROFILER_ENCODER_MODEL)."""
    known = {f"PROFILER_{field.upper()}" for field in Settings.model_fields}
    named = set(re.findall(r"\bPROFILER_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    assert named - known == set()


# --- the real tool, where it is installed --------------------------------------------


def compose_command() -> list[str] | None:
    """`docker compose` (the CLI plugin), else a standalone v2 `docker-compose`, else None."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for command in candidates:
        probe = subprocess.run(
            [*command, "version", "--short"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0 and not probe.stdout.strip().startswith("1."):
            return command
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    """`docker compose config` needs no daemon; it checks what the schema cannot (merges, refs)."""
    command = compose_command()
    if command is None:
        pytest.skip("the docker compose plugin (or a v2 docker-compose) is not installed")
    for profile in ([], ["--profile", "gpu"]):
        result = subprocess.run(
            [*command, "-f", str(COMPOSE), *profile, "config", "-q"],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
