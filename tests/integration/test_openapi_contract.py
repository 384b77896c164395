"""schemathesis against the running API's /openapi.json: generated requests to every
operation never get a 500, and every response matches the schema the document gives for it."""

import subprocess
import sys
from pathlib import Path

import httpx

from core.config import Settings
from core.db import Database
from core.keys import create_key
from tests.support import ServiceProcess, free_port, http_ok, wait_for

CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"


def test_every_operation_answers_within_its_documented_schema(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    api = ServiceProcess(
        settings.model_copy(update={"api_port": port}), tmp_path / "api.log", "api"
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_ok(f"{base}/healthz"), 60, "the api")
        with Database(settings.database_url).session() as session:
            _, key = create_key(session, "contract", "admin")
        # The CLI installed next to this interpreter (the venv may not be on PATH).
        schemathesis = str(Path(sys.executable).parent / "schemathesis")
        result = subprocess.run(
            [
                schemathesis,
                "run",
                f"{base}/openapi.json",
                "--header",
                f"Authorization: Bearer {key}",
                "--checks",
                CHECKS,
                "--max-examples",
                "30",
                "--generation-deterministic",
                "--request-timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,  # its example cache stays out of the checkout
        )
        assert result.returncode == 0, result.stdout[-6000:] + api.log()[-3000:]
        spec = httpx.get(f"{base}/openapi.json").json()
        operations = sum(len(methods) for methods in spec["paths"].values())
        assert f"Tested: {operations}" in result.stdout  # every operation was exercised
    finally:
        api.stop()
