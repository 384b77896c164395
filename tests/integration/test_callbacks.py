"""Callbacks: a job's summary POSTed when it ends, signed, retried until the receiver takes
it, every attempt recorded; the secret shown once; a URL refused without a secret."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.broker.routing import SEND_CALLBACKS
from core.callbacks import DELIVERY_HEADER, SIGNATURE_HEADER, sign, verify
from core.config import Settings
from tests.images import chest_like, jpeg_bytes
from tests.receiver import Receiver
from tests.stack import Stack
from tests.support import REPO, api_client, settings_env, wait_for, zip_bytes


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver(failures=2)
    yield running
    running.close()


def test_a_receiver_that_fails_twice_gets_the_summary_on_the_third_attempt(
    settings: Settings, baseline_model: Path, receiver: Receiver, tmp_path: Path
) -> None:
    configured = settings.model_copy(update={"callback_retry_seconds": 0.2})
    stack = Stack(configured, tmp_path)
    try:
        stack.start_worker()
        stack.import_model(baseline_model)
        made = stack.client.put("/v1/callback", json={}).get_json()
        secret = made["secret"]
        assert len(secret) == 64
        assert stack.client.get("/v1/callback").get_json()["secret"] is None  # shown once

        archive = zip_bytes([(f"{n}.jpg", jpeg_bytes(chest_like(seed=n))) for n in range(3)])
        submitted = stack.client.post(
            f"/v1/jobs?callback_url={receiver.url}", data=archive, content_type="application/zip"
        )
        assert submitted.status_code == 202, submitted.get_json()
        job_id = submitted.get_json()["id"]
        assert stack.wait_finished(job_id)["status"] == "completed"

        def delivered() -> dict[str, Any] | None:
            stack.celery.send_task(SEND_CALLBACKS)  # what beat sends every few seconds
            callback: dict[str, Any] = stack.job(job_id)["callback"]
            return callback if callback["state"] == "delivered" else None

        callback = wait_for(delivered, 60, "the callback delivered", interval=0.5)
        assert [a["http_status"] for a in callback["attempts"]] == [500, 500, 204]
        assert [a["number"] for a in callback["attempts"]] == [1, 2, 3]
        assert callback["attempts"][0]["error"].startswith("HTTP 500")
        assert callback["url"] == receiver.url

        # One job, three POSTs, each signed over its body with the secret shown once.
        assert len(receiver.received) == 3
        for headers, body in receiver.received:
            assert verify(secret, headers[SIGNATURE_HEADER], body)
            assert headers[DELIVERY_HEADER] == job_id
            summary = json.loads(body)
            assert summary["event"] == "job.ended"
            assert summary["job"]["id"] == job_id
            assert summary["job"]["status"] == "completed"
            assert summary["job"]["scored"] == 3
        metrics = stack.client.get("/metrics").get_data(as_text=True)
        assert 'pneumoscan_callbacks{state="delivered"} 1.0' in metrics
    finally:
        stack.close()


def test_a_replayed_or_altered_callback_does_not_verify() -> None:
    body = b'{"event": "job.ended"}'
    header = sign("s" * 64, body, 1_800_000_000)
    assert verify("s" * 64, header, body, now=1_800_000_100)
    assert not verify("s" * 64, header, body, now=1_800_000_000 + 301)  # too old: a replay
    assert not verify("s" * 64, header, body + b" ", now=1_800_000_100)
    assert not verify("t" * 64, header, body, now=1_800_000_100)
    assert not verify("s" * 64, "v1=abc", body)


def test_a_callback_url_needs_a_secret_and_the_default_url_applies(settings: Settings) -> None:
    from api import create_app

    app = create_app(settings)
    client = api_client(app, scope="submit", name="ward-3")
    archive = zip_bytes([("a.jpg", jpeg_bytes())])
    refused = client.post(
        "/v1/jobs?callback_url=http://127.0.0.1:9/x", data=archive, content_type="application/zip"
    )
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "no_callback_secret"
    assert client.get("/v1/jobs").get_json()["pagination"]["total"] == 0  # nothing was made
    bad = client.post(
        "/v1/jobs?callback_url=ftp://x/y", data=archive, content_type="application/zip"
    )
    assert bad.status_code == 400

    client.put("/v1/callback", json={"default_url": "http://127.0.0.1:9/default"})
    job = client.post("/v1/jobs", data=archive, content_type="application/zip").get_json()
    shown = client.get(f"/v1/jobs/{job['id']}").get_json()["callback"]
    assert shown["url"] == "http://127.0.0.1:9/default"
    assert shown["state"] == "pending"
    assert shown["attempts"] == []
    rotated = client.put("/v1/callback", json={"rotate_secret": True}).get_json()
    assert rotated["secret"] is not None
    assert rotated["default_url"] is None
    assert client.delete("/v1/callback").status_code == 204
    assert client.get("/v1/callback").status_code == 404
    app.extensions["pneumoscan"].db.dispose()


def test_an_admin_sets_a_names_callback_from_the_command_line(settings: Settings) -> None:
    """A DICOM peer's key name may have no key of its own to call `PUT /v1/callback` with."""
    from sqlalchemy import select

    from core.db import Database
    from core.models import CallbackSecret

    def keys_callback(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", "keys", "callback", "--name", "radiology", *args],
            env=settings_env(settings),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    made = keys_callback("--url", "https://ris.example/hooks")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert "shown only now" in made.stderr
    again = keys_callback("--url", "https://ris.example/other")
    assert again.stdout.strip() == ""  # the secret is not shown again
    assert keys_callback("--url", "ftp://x").returncode != 0
    db = Database(settings.database_url)
    with db.session() as session:
        (row,) = session.scalars(select(CallbackSecret)).all()
        assert (row.owner, row.secret, row.default_url) == (
            "radiology",
            secret,
            "https://ris.example/other",
        )
    db.dispose()
