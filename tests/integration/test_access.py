"""API keys: hashed at rest, a scope per endpoint, each client sees only its own jobs."""

import hashlib
import io
import subprocess
import sys
from collections.abc import Iterator

import pytest
from apiflask import APIFlask
from sqlalchemy import select

from api import create_app
from core.config import Settings
from core.db import Database
from core.errors import NotFoundError
from core.keys import authenticate, create_key, revoke_key
from core.models import ApiKey
from tests.images import jpeg_bytes
from tests.support import REPO, api_client, settings_env, zip_bytes

ENDPOINTS = [
    ("get", "/v1/jobs", "read"),
    ("get", "/v1/jobs/x", "read"),
    ("get", "/v1/jobs/x/results", "read"),
    ("get", "/v1/jobs/x/rejected", "read"),
    ("get", "/v1/models", "read"),
    ("get", "/v1/training-runs", "read"),
    ("get", "/v1/training-runs/1", "read"),
    ("get", "/v1/results/1/image", "read"),
    ("get", "/v1/results/1/heatmap", "read"),
    ("get", "/v1/models/x/plots/roc.png", "read"),
    ("post", "/v1/jobs", "submit"),
    ("post", "/v1/jobs/x/cancel", "submit"),
    ("get", "/v1/callback", "submit"),
    ("put", "/v1/callback", "submit"),
    ("delete", "/v1/callback", "submit"),
    ("put", "/v1/results/1/label", "review"),
    ("post", "/v1/models/x/activate", "admin"),
    ("post", "/v1/training-runs", "admin"),
]
# The roles each scope holds, spelled out here rather than read from core/keys.py.
HOLDS = {
    "read": {"read"},
    "submit": {"read", "submit"},
    "review": {"read", "review"},
    "admin": {"read", "submit", "review", "admin"},
}


@pytest.fixture
def app(settings: Settings) -> Iterator[APIFlask]:
    application = create_app(settings)
    yield application
    application.extensions["pneumoscan"].db.dispose()


@pytest.mark.parametrize(("method", "url", "_scope"), ENDPOINTS)
def test_every_v1_endpoint_needs_a_valid_key(
    app: APIFlask, method: str, url: str, _scope: str
) -> None:
    client = app.test_client()
    for headers in (
        {},
        {"Authorization": "Bearer psk_not-a-real-key"},
        {"Authorization": "Basic eDp5"},
    ):
        response = getattr(client, method)(url, headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "url", "needed"), ENDPOINTS)
def test_each_scope_reaches_exactly_its_endpoints(
    app: APIFlask, method: str, url: str, needed: str
) -> None:
    for scope, holds in HOLDS.items():
        response = getattr(api_client(app, scope), method)(url, json={})
        allowed = needed in holds
        if allowed:
            assert response.status_code != 403, (scope, url)
        else:
            assert response.status_code == 403, (scope, url)
            assert response.get_json()["error"]["code"] == "forbidden"


def test_health_and_the_openapi_document_stay_open(app: APIFlask) -> None:
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    spec = client.get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["BearerAuth"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/jobs"]["post"]["security"] == [{"BearerAuth": ["submit"]}]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_a_key_sees_only_its_own_jobs_unless_admin(app: APIFlask) -> None:
    alice, bob = api_client(app, "submit", "alice"), api_client(app, "submit", "bob")
    archive = zip_bytes([("a.jpeg", jpeg_bytes())])
    job_id = alice.post("/v1/jobs", data={"archive": (io.BytesIO(archive), "s.zip")}).get_json()[
        "id"
    ]
    for url in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/results", f"/v1/jobs/{job_id}/rejected"):
        assert bob.get(url).status_code == 404
        assert alice.get(url).status_code == 200
    assert bob.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
    assert bob.get("/v1/jobs").get_json()["items"] == []
    alice_reader = api_client(app, "read", "alice")  # another key of the same client
    assert [job["id"] for job in alice_reader.get("/v1/jobs").get_json()["items"]] == [job_id]
    assert api_client(app, "admin", "ops").get(f"/v1/jobs/{job_id}").status_code == 200
    reviewer = api_client(app, "review", "dr-a")  # a radiologist reads every job's results
    assert reviewer.get(f"/v1/jobs/{job_id}/results").status_code == 200
    assert (
        reviewer.post("/v1/jobs", data={"archive": (io.BytesIO(archive), "s.zip")}).status_code
        == 403
    )


def test_the_command_line_offers_every_scope() -> None:
    from cli.keys import keys_create
    from core.keys import SCOPES

    scope = next(p for p in keys_create.params if p.name == "scope")
    assert list(scope.type.choices) == list(SCOPES)  # type: ignore[attr-defined]


def test_keys_are_stored_only_as_hashes_and_revoked_keys_stop_working(
    settings: Settings, app: APIFlask
) -> None:
    env = settings_env(settings)
    created = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "create", "--name", "pacs", "--scope", "read"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("psk_")
    with app.extensions["pneumoscan"].db.session() as session:
        rows = session.scalars(select(ApiKey)).all()
        stored = [value for row in rows for value in (row.key_hash, row.prefix, row.name)]
        assert rows[0].key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in stored
    headers = {"Authorization": f"Bearer {secret}"}
    assert app.test_client().get("/v1/jobs", headers=headers).status_code == 200
    revoked = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "revoke", secret[:12]],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert revoked.returncode == 0, revoked.stderr
    assert app.test_client().get("/v1/jobs", headers=headers).status_code == 401


@pytest.mark.parametrize("given", ["%", "psk_%", "psk____", "SWAPCASE"])
def test_revoking_by_prefix_takes_the_prefix_literally_and_case_sensitively(
    backend_settings: Settings, given: str
) -> None:
    """`%` and `_` match only themselves, and a prefix differing only in case is another."""
    db = Database(backend_settings.database_url)
    try:
        with db.session() as session:
            key, secret = create_key(session, "pacs", "read")
            prefix = key.prefix
        wrong = prefix.swapcase() if given == "SWAPCASE" else given  # "PSK_..." at least
        with db.session() as session, pytest.raises(NotFoundError):
            revoke_key(session, wrong)
        with db.session() as session:
            assert authenticate(session, secret) is not None
            revoke_key(session, prefix)
        with db.session() as session:
            assert authenticate(session, secret) is None
    finally:
        db.dispose()
