"""The reading room through Flask's test client: sessions, CSRF, scopes, ranking, pictures.

The browser itself drives the same pages in tests/e2e/test_reading_room_browser.py.
"""

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from apiflask import APIFlask
from PIL import Image as PilImage
from sqlalchemy import insert, select

from api import create_app
from core import registry
from core.config import Settings
from core.db import Database
from core.imaging import decode_image
from core.jobs import create_job
from core.keys import create_key, revoke_key
from core.models import ApiKey, Image, JobStatus, Label, ModelVersion, RejectedEntry, SourceKind
from core.reading_room import Show, neighbours, ranked_page
from core.results import ImageResult, record_results
from core.storage import Storage, sha256_of
from tests.dicoms import chest_like, dataset, encode
from tests.images import chest_like as chest_jpeg
from tests.images import jpeg_bytes

OWNER = "ward-3"
# Probabilities of the job's images, in the order they were added; None: could not decode.
PROBABILITIES = [0.31, 0.92, 0.05, None, 0.67, 0.5]


@dataclass
class Room:
    app: APIFlask
    db: Database
    storage: Storage
    job_id: str
    image_ids: list[int]
    model: ModelVersion

    def key(self, scope: str, name: str = OWNER) -> str:
        with self.db.session() as session:
            return create_key(session, name, scope)[1]

    def browser(self, scope: str, name: str = OWNER) -> Any:
        """A test client signed in (through the sign-in form) with a new key of `scope`."""
        client = self.app.test_client()
        response = client.post(
            "/ui/sign-in",
            data={"api_key": self.key(scope, name), "csrf_token": csrf_of(client, "/ui/sign-in")},
        )
        assert response.status_code == 302, response.text
        return client


def csrf_of(client: Any, page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(page).text)
    assert found is not None
    return found.group(1)


@pytest.fixture
def room(settings: Settings, baseline_model: Path) -> Iterator[Room]:
    """A job of six JPEGs (one undecodable) scored by a real Keras model, one rejected entry."""
    app = create_app(settings)
    db = app.extensions["pneumoscan"].db
    storage = Storage(settings.storage_dir)
    with db.session() as session:
        model = registry.import_model(session, storage, baseline_model)
        registry.activate(session, model.version)
        job = create_job(session, SourceKind.IMAGES, "ward 3 morning", "job1", OWNER)
        job.status, job.total = JobStatus.RUNNING, len(PROBABILITIES)
        folder = storage.job_files_dir("job1")
        folder.mkdir(parents=True)
        rows = []
        for index, probability in enumerate(PROBABILITIES):
            path = folder / f"{index}.jpg"
            data = b"not a jpeg" if probability is None else jpeg_bytes(chest_jpeg(seed=index))
            path.write_bytes(data)
            rows.append(
                {
                    "job_id": "job1",
                    "relative_path": f"xrays/{index}.jpg",
                    "location": storage.relative(path),
                    "format": "jpeg",
                    "size_bytes": len(data),
                    "sha256": sha256_of(path),
                }
            )
        session.execute(insert(Image), rows)
        session.add(RejectedEntry(job_id="job1", path="notes.txt", reason="not an image"))
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
        results = [
            ImageResult(i, "job1", probability=p, error=None if p is not None else "not decodable")
            for i, p in zip(ids, PROBABILITIES, strict=True)
        ]
        record_results(session, results, model)
        session.expunge(model)
    yield Room(app, db, storage, "job1", ids, model)
    db.dispose()


def ranked_ids(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'data-result="(\d+)"', html)]


def test_signing_in_keeps_the_key_on_the_server_and_signing_out_ends_the_session(
    room: Room,
) -> None:
    client = room.app.test_client()
    assert client.get("/ui/jobs").headers["Location"].startswith("/ui/sign-in")
    secret = room.key("review")
    response = client.post(
        "/ui/sign-in", data={"api_key": secret, "csrf_token": csrf_of(client, "/ui/sign-in")}
    )
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over TLS it is Secure (next test)
    assert secret not in cookie
    assert secret[4:20] not in cookie
    page = client.get("/ui/jobs")
    assert page.status_code == 200
    assert OWNER in page.text
    assert secret not in page.text
    stolen = client.get_cookie("pneumoscan_session").value
    client.post("/ui/sign-out", data={"csrf_token": csrf_of(client, "/ui/jobs")})
    assert client.get("/ui/jobs").status_code == 302
    # The cookie as it was before signing out is worth nothing: the session is gone.
    thief = room.app.test_client()
    thief.set_cookie("pneumoscan_session", stolen)
    assert thief.get("/ui/jobs").status_code == 302
    assert thief.get("/v1/jobs").status_code == 401


def test_the_cookie_is_secure_over_tls_and_a_wrong_key_is_refused(room: Room) -> None:
    client = room.app.test_client()
    token = csrf_of(client, "/ui/sign-in")
    wrong = client.post("/ui/sign-in", data={"api_key": "psk_nope", "csrf_token": token})
    assert wrong.status_code == 401
    assert "not valid" in wrong.text
    secure = room.app.test_client()
    token = re.search(
        r'name="csrf_token" value="([^"]+)"',
        secure.get("/ui/sign-in", base_url="https://localhost").text,
    )
    assert token is not None
    response = secure.post(
        "/ui/sign-in",
        data={"api_key": room.key("read"), "csrf_token": token.group(1)},
        base_url="https://localhost",
        headers={"Referer": "https://localhost/ui/sign-in"},
    )
    assert response.status_code == 302
    assert "Secure" in response.headers["Set-Cookie"]


def test_revoking_the_key_ends_its_sessions(room: Room) -> None:
    client = room.browser("review", "dr-who")
    assert client.get("/ui/jobs").status_code == 200
    with room.db.session() as session:
        key = session.scalars(select(ApiKey).where(ApiKey.name == "dr-who")).one()
        revoke_key(session, key.prefix)
    assert client.get("/ui/jobs").status_code == 302


def test_a_form_without_its_csrf_token_is_refused(room: Room) -> None:
    client = room.browser("review")
    image_id = room.image_ids[1]
    refused = client.post(f"/ui/images/{image_id}/label", data={"label": "PNEUMONIA"})
    assert refused.status_code == 400
    assert "security token" in refused.text
    forged = client.post(
        f"/ui/images/{image_id}/label", data={"label": "PNEUMONIA", "csrf_token": "forged"}
    )
    assert forged.status_code == 400
    # The API, called with the session cookie instead of a key, wants the token in a header.
    api = client.put(f"/v1/results/{image_id}/label", json={"label": "NORMAL"})
    assert api.status_code == 400
    assert api.get_json()["error"]["code"] == "csrf_failed"
    with room.db.session() as session:
        assert session.scalars(select(Label)).all() == []
    token = csrf_of(client, "/ui/jobs")
    sent = client.put(
        f"/v1/results/{image_id}/label", json={"label": "NORMAL"}, headers={"X-CSRFToken": token}
    )
    assert sent.status_code == 200
    assert sent.get_json()["labelled_by"] == OWNER


def test_a_read_key_sees_no_confirm_buttons_and_its_forged_post_is_refused(room: Room) -> None:
    client = room.browser("read")
    image_id = room.image_ids[1]
    page = client.get(f"/ui/images/{image_id}")
    assert page.status_code == 200
    assert "confirm-pneumonia" not in page.text
    token = csrf_of(client, f"/ui/images/{image_id}")
    forged = client.post(
        f"/ui/images/{image_id}/label", data={"label": "PNEUMONIA", "csrf_token": token}
    )
    assert forged.status_code == 403
    with room.db.session() as session:
        assert session.scalars(select(Label)).all() == []


def test_confirming_on_the_page_is_the_label_endpoints_label(room: Room) -> None:
    client = room.browser("review", "dr-grey")
    top = room.image_ids[1]  # 0.92
    page = client.get(f"/ui/images/{top}")
    assert "confirm-pneumonia" in page.text
    assert "Not yet confirmed" in page.text
    token = csrf_of(client, f"/ui/images/{top}")
    response = client.post(
        f"/ui/images/{top}/label",
        data={"label": "PNEUMONIA", "csrf_token": token},
        follow_redirects=True,
    )
    assert response.status_code == 200
    assert re.search(r"Confirmed <strong>PNEUMONIA</strong> by\s+dr-grey", response.text)
    api = room.app.test_client()
    results = api.get(
        "/v1/jobs/job1/results", headers={"Authorization": f"Bearer {room.key('admin', 'x')}"}
    ).get_json()
    confirmed = {item["id"]: item["confirmed_label"] for item in results["items"]}
    assert confirmed[top] == "PNEUMONIA"
    assert [label for label in confirmed.values() if label] == ["PNEUMONIA"]
    # The job page now counts one image fewer as not yet confirmed.
    unconfirmed = client.get("/ui/jobs/job1?show=unconfirmed")
    assert top not in ranked_ids(unconfirmed.text)


def test_the_job_page_ranks_images_highest_first_with_filters_and_rejections(room: Room) -> None:
    client = room.browser("read")
    page = client.get("/ui/jobs/job1")
    assert page.status_code == 200
    by_probability = sorted(
        (pair for pair in zip(PROBABILITIES, room.image_ids, strict=True) if pair[0] is not None),
        reverse=True,
    )
    failed = [i for p, i in zip(PROBABILITIES, room.image_ids, strict=True) if p is None]
    assert ranked_ids(page.text) == [i for _, i in by_probability] + failed
    assert "notes.txt" in page.text
    assert "not an image" in page.text
    pneumonia = ranked_ids(client.get("/ui/jobs/job1?show=pneumonia").text)
    assert pneumonia == [i for p, i in by_probability if p >= 0.5]
    assert ranked_ids(client.get("/ui/jobs/job1?show=errors").text) == failed
    nonsense = client.get("/ui/jobs/job1?show=nonsense")
    assert nonsense.status_code == 400
    assert nonsense.mimetype == "text/html"
    assert "show must be one of all, pneumonia" in nonsense.text
    # Another owner's job does not exist for this key.
    assert room.browser("read", "ward-9").get("/ui/jobs/job1").status_code == 404
    csv = client.get("/v1/jobs/job1/results?format=csv")
    assert csv.status_code == 200
    assert csv.text.count("\n") == len(PROBABILITIES) + 1


def test_arrows_step_through_the_ranking(room: Room) -> None:
    client = room.browser("read")
    ranked = ranked_ids(client.get("/ui/jobs/job1").text)
    middle = client.get(f"/ui/images/{ranked[1]}").text
    assert f'href="/ui/images/{ranked[0]}?show=all"' in middle
    assert f'href="/ui/images/{ranked[2]}?show=all"' in middle
    assert "2 of 6" in middle


@pytest.mark.parametrize("by_study", [False, True])
def test_paging_a_20000_image_job_keeps_the_ranking(
    backend_settings: Settings, by_study: bool
) -> None:
    db = Database(backend_settings.database_url)
    rng = np.random.default_rng(5)
    count = 20_000
    probabilities = rng.uniform(0, 1, count).round(6)
    with db.session() as session:
        create_job(session, SourceKind.IMAGES, "big", "big")
        session.execute(
            insert(Image),
            [
                {
                    "job_id": "big",
                    "relative_path": f"{i}.jpg",
                    "location": f"x/{i}",
                    "format": "jpeg",
                    "size_bytes": 1,
                    "sha256": "0" * 64,
                    "probability": float(p) if i % 1000 else None,
                    "label": ("PNEUMONIA" if p >= 0.5 else "NORMAL") if i % 1000 else None,
                    "error": None if i % 1000 else "not decodable",
                    "study_uid": f"1.2.{i % 50}" if by_study else None,
                }
                for i, p in enumerate(probabilities)
            ],
        )
    with db.session() as session:
        rows = session.execute(
            select(Image.id, Image.probability, Image.study_uid).where(Image.job_id == "big")
        ).all()
        if by_study:
            top = {}
            for _, p, study in rows:
                top[study] = max(top.get(study, -1.0), p if p is not None else -1.0)
            expected = sorted(
                rows,
                key=lambda r: (
                    -top[r.study_uid],
                    r.study_uid,
                    r.probability is None,
                    -(r.probability or 0),
                    r.id,
                ),
            )
        else:
            expected = sorted(
                rows, key=lambda r: (r.probability is None, -(r.probability or 0), r.id)
            )
        want = [row.id for row in expected]
        page = ranked_page(session, "big", Show.ALL, 300, 48)
        assert page.total == count
        assert [item.id for item in page.items] == want[299 * 48 : 300 * 48]
        last = ranked_page(session, "big", Show.ALL, 417, 48)
        assert [item.id for item in last.items] == want[416 * 48 :]
        if not by_study:  # the undecodable images come last (by study: last of their study)
            assert all(item.error for item in last.items[-20:])
        place = neighbours(session, "big", want[5000], Show.ALL)
        assert place is not None
        assert (place.position, place.total) == (5001, count)
        assert (place.previous_id, place.next_id) == (want[4999], want[5001])
        pneumonia = ranked_page(session, "big", Show.PNEUMONIA, 1, 10_000)
        assert all(item.label == "PNEUMONIA" for item in pneumonia.items)
    db.dispose()


def test_the_preview_is_the_stored_image_as_scoring_decodes_it_and_is_cached(room: Room) -> None:
    client = room.browser("read")
    image_id = room.image_ids[0]
    response = client.get(f"/v1/results/{image_id}/image?size=200")
    assert response.status_code == 200
    assert response.mimetype == "image/jpeg"
    assert "private" in response.headers["Cache-Control"]
    with PilImage.open(io.BytesIO(response.data)) as picture:
        assert max(picture.size) == 224  # the stored image is 224 px: never enlarged
        shown = np.asarray(picture.convert("L"), dtype=float)
    cached = room.storage.preview("job1", image_id, 256)
    assert cached.is_file()
    with room.db.session() as session:
        location = session.get(Image, image_id).location  # type: ignore[union-attr]
    decoded = np.asarray(decode_image(room.storage.resolve(location), "jpeg", 256, 10**8))
    assert np.abs(shown - decoded).mean() < 3  # the same picture, JPEG-encoded once more
    assert client.get(f"/v1/results/{image_id}/image?size=5000").status_code == 400
    broken = client.get(f"/v1/results/{room.image_ids[3]}/image")
    assert broken.status_code == 422
    assert room.browser("read", "ward-9").get(f"/v1/results/{image_id}/image").status_code == 404


def test_a_dicom_preview_is_windowed_as_scoring_windows_it(room: Room) -> None:
    values = chest_like(120, 100)
    ds = dataset(values, bits=12, WindowCenter=1200, WindowWidth=1600)
    path = room.storage.job_files_dir("job1") / "study.dcm"
    path.write_bytes(encode(ds))
    with room.db.session() as session:
        session.add(
            Image(
                job_id="job1",
                relative_path="study.dcm",
                location=room.storage.relative(path),
                format="dicom",
                size_bytes=path.stat().st_size,
                sha256=sha256_of(path),
                study_uid=str(ds.StudyInstanceUID),
            )
        )
        session.flush()
        image_id = session.scalars(select(Image.id).where(Image.format == "dicom")).one()
    response = room.browser("read").get(f"/v1/results/{image_id}/image?size=128")
    assert response.status_code == 200
    with PilImage.open(io.BytesIO(response.data)) as picture:
        shown = np.asarray(picture.convert("L"), dtype=float)
    as_scored = decode_image(path, "dicom", 128, 10**8)
    as_scored.thumbnail((128, 128))
    assert shown.shape == np.asarray(as_scored).shape
    assert np.abs(shown - np.asarray(as_scored, dtype=float)).mean() < 3
    # A plain min-max rescale of the stored values would be another picture.
    plain = values * 255
    plain_small = np.asarray(PilImage.fromarray(plain.astype(np.uint8)).resize(shown.shape[::-1]))
    assert np.abs(shown - plain_small).mean() > 10


@pytest.mark.slow
def test_the_heatmap_is_202_until_a_worker_made_it_with_the_scoring_version(
    room: Room, settings: Settings
) -> None:
    from worker.heatmaps import Explainer, make_heatmap

    client = room.browser("read")
    image_id = room.image_ids[1]
    first = client.get(f"/v1/results/{image_id}/heatmap")
    assert first.status_code == 202
    assert first.headers["Retry-After"] == "2"
    asked = room.storage.heatmap("job1", image_id).with_suffix(".requested")
    assert asked.is_file()
    sent_at = asked.stat().st_mtime
    assert client.get(f"/v1/results/{image_id}/heatmap").status_code == 202
    assert asked.stat().st_mtime == sent_at  # asked once, not on every poll
    # What the worker's task runs (the real worker does it in the browser test).
    assert make_heatmap(room.db, room.storage, settings, Explainer(room.storage), image_id)
    done = client.get(f"/v1/results/{image_id}/heatmap")
    assert done.status_code == 200
    assert done.mimetype == "image/png"
    with PilImage.open(io.BytesIO(done.data)) as picture:
        assert picture.mode == "RGBA"
        assert picture.size == (512, 512)  # the stored image is square
    unscored = client.get(f"/v1/results/{room.image_ids[3]}/heatmap")
    assert unscored.status_code == 409


def test_a_versions_plots_are_served(room: Room) -> None:
    client = room.browser("read")
    folder = room.storage.model_dir(room.model.version)
    PilImage.new("RGB", (40, 30), "white").save(folder / "roc.png")
    response = client.get(f"/v1/models/{room.model.version}/plots/roc.png")
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert client.get(f"/v1/models/{room.model.version}/plots/model.png").status_code == 404
    assert client.get(f"/v1/models/{room.model.version}/plots/reliability.png").status_code == 404
    assert client.get("/v1/models/nope/plots/roc.png").status_code == 404
    models = client.get("/ui/models")
    assert room.model.version in models.text


def test_admins_activate_a_version_after_a_confirmation_step(
    room: Room, baseline_model: Path
) -> None:
    with room.db.session() as session:
        candidate = registry.import_model(session, room.storage, baseline_model, threshold=0.4)
        version = candidate.version
    reviewer = room.browser("review")
    page = reviewer.get("/ui/models").text
    assert version in page
    assert f"/ui/models/{version}/activate" not in page  # no button for a non-admin
    token = csrf_of(reviewer, "/ui/models")
    refused = reviewer.post(f"/ui/models/{version}/activate", data={"csrf_token": token})
    assert refused.status_code == 403
    admin = room.browser("admin", "chief")
    assert f"/ui/models/{version}/activate" in admin.get("/ui/models").text
    confirm = admin.get(f"/ui/models/{version}/activate")
    assert f"Activate version <code>{version}</code>?" in confirm.text
    assert f"instead of <code>{room.model.version}</code>" in confirm.text
    with room.db.session() as session:  # asking is not doing
        assert registry.active_version(session).version == room.model.version  # type: ignore[union-attr]
    done = admin.post(
        f"/ui/models/{version}/activate",
        data={"csrf_token": csrf_of(admin, f"/ui/models/{version}/activate")},
        follow_redirects=True,
    )
    assert done.status_code == 200
    assert f"Version {version} is now active." in done.text
    with room.db.session() as session:
        assert registry.active_version(session).version == version  # type: ignore[union-attr]
    # Rolling back is the same step, offered on the version that was active before.
    assert f"/ui/models/{room.model.version}/activate" in admin.get("/ui/models").text


def test_admins_start_a_training_run_from_the_page(room: Room, settings: Settings) -> None:
    admin = room.browser("admin", "chief")
    token = csrf_of(admin, "/ui/models")
    without_data = admin.post("/ui/training-runs", data={"csrf_token": token})
    assert without_data.status_code == 400
    assert "no reference data" in without_data.text
    room.app.extensions["pneumoscan"].settings = settings.model_copy(
        update={"data_dir": Path("/reference")}
    )
    started = admin.post("/ui/training-runs", data={"csrf_token": token}, follow_redirects=True)
    assert started.status_code == 200
    found = re.search(r"Training run (\d+) queued", started.text)
    assert found is not None
    from core.models import TrainingRun

    with room.db.session() as session:
        run = session.get(TrainingRun, int(found.group(1)))
        assert run is not None
        assert (run.status, run.requested_by) == ("queued", "chief")
    assert f'data-run="{run.id}" data-live' in started.text  # its epochs are followed live
    submitter = room.browser("submit")
    own_token = csrf_of(submitter, "/ui/models")
    assert submitter.post("/ui/training-runs", data={"csrf_token": own_token}).status_code == 403


def test_a_dicom_job_lists_its_images_under_their_studies(room: Room) -> None:
    with room.db.session() as session:
        create_job(session, SourceKind.ARCHIVE, "studies.zip", "dicom-job", OWNER)
        rows = [
            ("1.2.3", 0.2),
            ("1.2.3", 0.95),
            ("1.2.4", 0.6),
            ("1.2.4", 0.7),
            ("1.2.5", 0.1),
        ]
        session.execute(
            insert(Image),
            [
                {
                    "job_id": "dicom-job",
                    "relative_path": f"{study}/{index}.dcm",
                    "location": f"x/{index}",
                    "format": "dicom",
                    "size_bytes": 1,
                    "sha256": "0" * 64,
                    "probability": probability,
                    "label": "PNEUMONIA" if probability >= 0.5 else "NORMAL",
                    "study_uid": study,
                }
                for index, (study, probability) in enumerate(rows)
            ],
        )
    html = room.browser("read").get("/ui/jobs/dicom-job").text
    headings = re.findall(r"Study <code>([\d.]+)</code>", html)
    assert headings == ["1.2.3", "1.2.4", "1.2.5"]  # by each study's most suspicious image
    paths = re.findall(r'class="path">([^<]+)<', html)
    assert paths == ["1.2.3/1.dcm", "1.2.3/0.dcm", "1.2.4/3.dcm", "1.2.4/2.dcm", "1.2.5/4.dcm"]


def test_with_no_model_the_pages_say_what_to_do(settings: Settings) -> None:
    app = create_app(settings)
    db = app.extensions["pneumoscan"].db
    with db.session() as session:
        create_job(session, SourceKind.IMAGES, "early", "early", "admin").waiting_for_model = True
        secret = create_key(session, "admin", "admin")[1]
    client = app.test_client()
    client.post(
        "/ui/sign-in", data={"api_key": secret, "csrf_token": csrf_of(client, "/ui/sign-in")}
    )
    jobs = client.get("/ui/jobs").text
    assert "(waiting for a model)" in jobs
    assert 'href="/ui/models"' in jobs
    models = client.get("/ui/models").text
    assert "No model versions yet" in models
    assert "pneumoscan models import model.keras --activate" in models
    db.dispose()


def test_api_processes_starting_together_sign_cookies_with_one_secret(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from api.ui.sessions import _kept_secret

    path = tmp_path / "storage" / ".secret-key"
    with ThreadPoolExecutor(8) as pool:
        secrets_seen = set(pool.map(lambda _: _kept_secret(path), range(32)))
    assert len(secrets_seen) == 1
    assert len(secrets_seen.pop()) >= 48
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert [p.name for p in path.parent.iterdir()] == [".secret-key"]  # no temporaries left
