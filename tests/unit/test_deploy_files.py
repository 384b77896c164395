"""The production files, read as compose and Docker read them (building and running them is
`make compose-check`, too long for CI: docs/deploy.md)."""

import re

import yaml

from tests.support import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_base_images_are_variables_whose_defaults_are_the_official_images() -> None:
    assert SERVICES["redis"]["image"] == "${PNEUMOSCAN_REDIS_IMAGE:-redis:7-alpine}"
    assert SERVICES["postgres"]["image"] == "${PNEUMOSCAN_POSTGRES_IMAGE:-postgres:16-alpine}"
    built = [service for service in SERVICES.values() if "build" in service]
    assert {service["build"]["args"]["EXTRAS"] for service in built} == {"", "cpu", "gpu"}
    for service in built:
        assert service["build"]["args"]["BASE_IMAGE"] == (
            "${PNEUMOSCAN_PYTHON_IMAGE:-python:3.11-slim}"
        )
        assert service["build"]["network"] == "host"  # builds reach the package registries
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}" in dockerfile


def test_images_run_as_a_user_and_the_check_relies_on_healthchecks_and_restarts() -> None:
    users = re.findall(r"^USER (\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert users[-1] not in ("root", "0")
    assert "healthcheck" in SERVICES["api"]
    for name in ("redis", "postgres"):
        assert "healthcheck" in SERVICES[name]
    long_running = [name for name in SERVICES if name != "migrate"]
    for name in long_running:
        assert SERVICES[name].get("restart", "unless-stopped") == "unless-stopped", name
    assert SERVICES["migrate"]["restart"] == "no"


def test_a_cpu_worker_scales_and_gpu_workers_keep_their_reservation_in_a_profile() -> None:
    worker = SERVICES["worker"]
    assert worker["build"]["args"]["EXTRAS"] == "cpu"
    assert "profiles" not in worker
    for name in ("worker-gpu", "worker-training-gpu"):
        assert SERVICES[name]["profiles"] == ["gpu"]
        (device,) = SERVICES[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
    for name in ("api", "worker-ingest", "dicom-node", "beat", "migrate"):
        assert SERVICES[name]["image"] == "pneumoscan-api", name  # no TensorFlow in them
