"""The reading room in a real browser: Debian's Chromium driven by Selenium, headless, against
a real `pneumoscan up` (its API, its workers, a real Keras model).

One walk through the whole path, so one `up` serves it all: sign in with the key `up`
printed, upload a zip of real X-rays through the page and watch its progress reach the end,
open the job, check the ranking, open the top image, press `p`, find the label through the
API, toggle the heatmap a worker makes, step with the arrows; then a `read` key that sees no
buttons and whose forged POST is refused, and a POST without its CSRF token.

With PNEUMOSCAN_SCREENSHOTS=<folder> it also saves a screenshot of each page there (the
README's pictures come from `PNEUMOSCAN_SCREENSHOTS=docs/screenshots`); it then uploads
synthetic images instead, so no image of the dataset ends up in the repository.
"""

import io
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import unavailable
from tests.e2e.conftest import Service, pneumoscan
from tests.images import chest_like, png_bytes
from tests.support import wait_for

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
IMAGES_PER_CLASS = 6
SCREENSHOTS = os.environ.get("PNEUMOSCAN_SCREENSHOTS")
FILE_LIMIT = 8


@pytest.fixture
def extra_env() -> dict[str, str]:
    """A small per-request file limit, so a folder of 12 goes the way a large one goes."""
    return {"PNEUMOSCAN_MAX_UPLOAD_FILES": str(FILE_LIMIT)}


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        unavailable("chromium and chromium-driver are not installed (apt-get install them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER)
    )
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def study_zip(shared_data: Path, folder: Path) -> Path:
    """A zip of real X-rays (or, for screenshots, synthetic ones) as a department sends it."""
    path = folder / "ward-3-morning.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for label in ("NORMAL", "PNEUMONIA"):
            if SCREENSHOTS:  # brighter pictures score higher with the brightness model
                for index in range(IMAGES_PER_CLASS):
                    picture = chest_like(512, seed=index + (100 if label == "NORMAL" else 0))
                    gain = 0.55 + 0.08 * index + (0.45 if label == "PNEUMONIA" else 0.0)
                    brighter = picture.point(lambda value, gain=gain: min(255, round(value * gain)))
                    archive.writestr(f"{label.lower()}-{index:02}.png", png_bytes(brighter))
                continue
            originals = sorted((shared_data / "origres" / label).iterdir())[:IMAGES_PER_CLASS]
            for original in originals:
                archive.write(original, f"{label.lower()}/{original.name}")
    return path


def brightness_map_model(path: Path, size: int = 75) -> Path:
    """For the screenshots: a real Keras model scoring brightness through a convolutional
    map, so its scores spread out and its heatmaps show the bright parts."""
    import keras
    import numpy as np

    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    light = keras.layers.Conv2D(1, 1, activation="relu", name="light")
    x = keras.layers.GlobalAveragePooling2D()(light(x))
    dense = keras.layers.Dense(1, activation="sigmoid", name="pneumonia")
    model = keras.Model(inputs, dense(x))
    light.set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32), np.zeros(1, np.float32)])
    dense.set_weights([np.full((1, 1), 16.0, np.float32), np.array([-8.0], np.float32)])
    model.save(path)
    return path


def shoot(driver: Any, name: str) -> None:
    if SCREENSHOTS:
        folder = Path(SCREENSHOTS)
        folder.mkdir(parents=True, exist_ok=True)
        png = driver.get_screenshot_as_png()
        from PIL import Image

        with Image.open(io.BytesIO(png)) as shot:  # small files for the repository
            shot.convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(
                folder / f"{name}.png", optimize=True
            )


def text_of(driver: Any, selector: str) -> str:
    """The element's text; empty while the page is reloading under us."""
    try:
        return str(driver.find_element(By.CSS_SELECTOR, selector).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def fits_the_width(driver: Any) -> bool:
    return bool(
        driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1"
        )
    )


def sign_in(driver: Any, url: str, key: str) -> None:
    driver.get(f"{url}/ui")
    assert "/ui/sign-in" in driver.current_url
    field = driver.find_element(By.ID, "api_key")
    field.send_keys(key)
    field.send_keys(Keys.ENTER)
    wait_for(lambda: "/ui/jobs" in driver.current_url, 20, "the jobs page after signing in")


def folder_of_xrays(shared_data: Path, root: Path, per_class: int) -> Path:
    """A folder as a department exports one: a subfolder per ward, real X-rays in them."""
    for label in ("NORMAL", "PNEUMONIA"):
        ward = root / f"ward-{label.lower()}"
        ward.mkdir(parents=True)
        for original in sorted((shared_data / "origres" / label).iterdir())[-per_class:]:
            shutil.copy(original, ward / original.name)
    return root


def upload_and_follow(driver: Any, picker: str, path: Path) -> str:
    """Send `path` through the page's picker; the new job's id once the page shows it done."""
    before = {
        row.get_attribute("data-job")
        for row in driver.find_elements(By.CSS_SELECTOR, "tr[data-job]")
    }
    driver.find_element(By.ID, picker).send_keys(str(path))

    def new_job() -> str | None:
        try:
            rows = driver.find_elements(By.CSS_SELECTOR, "tr[data-job]")
            fresh = [row.get_attribute("data-job") for row in rows]
        except StaleElementReferenceException:
            return None
        return next((job for job in fresh if job not in before), None)

    job_id = wait_for(new_job, 60, f"a job for {path.name}")
    wait_for(
        lambda: text_of(driver, f'tr[data-job="{job_id}"] [data-field="status"]') == "completed",
        180,
        f"the job of {path.name} to complete",
        interval=1,
    )
    return str(job_id)


def post_from_page(driver: Any, path: str, body: str) -> int:
    """What a forged form would send: the page's own CSRF token (or none), from its origin."""
    return int(
        driver.execute_async_script(
            """
            const [path, body, done] = arguments;
            fetch(path, {method: "POST", credentials: "same-origin", redirect: "manual",
                         headers: {"Content-Type": "application/x-www-form-urlencoded"}, body})
              .then((response) => done(response.status), () => done(-1));
            """,
            path,
            body,
        )
    )


@pytest.mark.slow
def test_a_radiologist_uploads_reads_and_confirms_in_a_real_browser(
    service: Service,
    browser: Any,
    baseline_model: Path,
    shared_data: Path,
    tmp_path: Path,
) -> None:
    env, _, log_path = service
    url = f"http://127.0.0.1:{env['PNEUMOSCAN_API_PORT']}"
    key = env["PNEUMOSCAN_API_KEY"]
    model = brightness_map_model(tmp_path / "bright.keras") if SCREENSHOTS else baseline_model
    imported = pneumoscan(env, "models", "import", str(model), "--activate")
    assert imported.returncode == 0, imported.stderr
    driver = browser

    # Sign in with the key `up` printed (it names the page too); the browser keeps a session
    # cookie, not the key.
    assert f"the reading room: {url}/ui" in log_path.read_text()
    driver.get(f"{url}/ui")
    shoot(driver, "sign-in")
    sign_in(driver, url, key)
    cookie = driver.get_cookie("pneumoscan_session")
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert key not in cookie["value"]
    stored = driver.execute_script(
        "return JSON.stringify(localStorage) + JSON.stringify(sessionStorage)"
    )
    assert key not in stored

    # Upload a zip through the page; the upload bar, then the job's own bar, reach the end.
    archive = study_zip(shared_data, tmp_path)
    driver.find_element(By.ID, "pick-zip").send_keys(str(archive))
    wait_for(lambda: "queued" in text_of(driver, "#upload-text"), 60, "the upload to be accepted")
    assert driver.find_element(By.ID, "upload-progress").get_attribute("value") == "100"
    # The page reloads itself to list the new job.
    wait_for(
        lambda: driver.execute_script(
            "return document.readyState === 'complete' && "
            "document.getElementById('upload-status').hidden && "
            "document.querySelector('tr[data-job]') !== null"
        ),
        20,
        "the jobs page to list the new job",
    )
    job_id = driver.find_element(By.CSS_SELECTOR, "tr[data-job]").get_attribute("data-job")

    def finished() -> bool:
        status = text_of(driver, f'tr[data-job="{job_id}"] [data-field="status"]')
        return status.startswith(("completed", "failed"))

    wait_for(finished, 180, "the job to finish, as the page shows it", interval=1)
    assert text_of(driver, f'tr[data-job="{job_id}"] [data-field="status"]') == "completed", (
        log_path.read_text()[-3000:]
    )
    assert text_of(driver, f'tr[data-job="{job_id}"] [data-field="percent"]') == "100 %"
    assert archive.name in text_of(driver, f'tr[data-job="{job_id}"]')  # the zip's own name
    shoot(driver, "jobs")
    assert fits_the_width(driver)

    # The job: images ranked by probability, highest first, as the API reports them.
    driver.find_element(By.CSS_SELECTOR, f'a[href="/ui/jobs/{job_id}"]').click()
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".tile"), 20, "the job page")
    shown = [
        float(found.get_attribute("data-probability"))
        for found in driver.find_elements(By.CSS_SELECTOR, ".prob")
    ]
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    results = api.get(f"/v1/jobs/{job_id}/results").json()["items"]
    assert len(shown) == len(results) == 2 * IMAGES_PER_CLASS
    assert shown == sorted((item["probability"] for item in results), reverse=True)
    wait_for(
        lambda: driver.execute_script(
            "return [...document.images].every((image) => image.complete && image.naturalWidth)"
        ),
        60,
        "every thumbnail to load",
    )
    shoot(driver, "job")

    # The top image: press p, see the confirmed label, find it through the API.
    driver.find_element(By.CSS_SELECTOR, ".tile a").click()
    wait_for(lambda: driver.find_elements(By.ID, "xray"), 20, "the image page")
    top_id = int(driver.current_url.split("/ui/images/")[1].split("?")[0])
    assert top_id == max(results, key=lambda item: item["probability"])["id"]
    assert "Not yet confirmed" in text_of(driver, "#confirmed")
    driver.find_element(By.TAG_NAME, "body").send_keys("p")
    wait_for(lambda: "Confirmed PNEUMONIA" in text_of(driver, "#confirmed"), 20, "the label")
    assert "by admin" in text_of(driver, "#confirmed")
    labelled = {item["id"]: item for item in api.get(f"/v1/jobs/{job_id}/results").json()["items"]}
    assert labelled[top_id]["confirmed_label"] == "PNEUMONIA"

    # The heatmap: made by a worker with the scoring version, then laid over the image.
    overlay = driver.find_element(By.ID, "heatmap")
    assert not overlay.is_displayed()
    driver.find_element(By.TAG_NAME, "body").send_keys("h")
    wait_for(
        lambda: (
            overlay.is_displayed()
            and driver.execute_script("return arguments[0].naturalWidth", overlay) > 0
        ),
        120,
        "the heatmap a worker makes",
        interval=0.5,
    )
    assert driver.find_element(By.ID, "toggle-heatmap").get_attribute("aria-pressed") == "true"
    shoot(driver, "image")
    driver.find_element(By.TAG_NAME, "body").send_keys("h")
    wait_for(lambda: not overlay.is_displayed(), 10, "the heatmap to hide")
    assert fits_the_width(driver)

    # The arrows step through the ranking.
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    try:
        wait_for(lambda: f"/ui/images/{top_id}" not in driver.current_url, 20, "the next image")
    except TimeoutError:
        state = driver.execute_script(
            "return [document.activeElement.outerHTML.slice(0, 200), document.readyState, "
            "String(!!document.getElementById('next'))]"
        )
        raise AssertionError(f"ArrowRight did not move on: {state}") from None
    assert "2 of" in text_of(driver, ".steps")

    # A POST without the CSRF token is refused, and changes nothing.
    second_id = int(driver.current_url.split("/ui/images/")[1].split("?")[0])
    assert post_from_page(driver, f"/ui/images/{second_id}/label", "label=NORMAL") == 400
    labelled = {item["id"]: item for item in api.get(f"/v1/jobs/{job_id}/results").json()["items"]}
    assert labelled[second_id]["confirmed_label"] is None

    # Models: versions and their plots; at a tablet's width every page still fits.
    driver.get(f"{url}/ui/models")
    assert driver.find_elements(By.CSS_SELECTOR, ".model")
    shoot(driver, "models")
    driver.set_window_size(800, 1100)
    for page in (f"/ui/jobs/{job_id}", f"/ui/images/{top_id}", "/ui/models", "/ui/jobs"):
        driver.get(url + page)
        assert fits_the_width(driver), page
    driver.set_window_size(1280, 800)

    # Folders: a few files go as themselves, more than the API takes in one request go as a
    # zip the page packs (stored, with their relative paths); both keep the folders' names.
    driver.get(f"{url}/ui/jobs")
    few = upload_and_follow(
        driver, "pick-folder", folder_of_xrays(shared_data, tmp_path / "few", FILE_LIMIT // 4)
    )
    many = upload_and_follow(
        driver, "pick-folder", folder_of_xrays(shared_data, tmp_path / "many", FILE_LIMIT)
    )
    for job, count, source in ((few, FILE_LIMIT // 2, "images"), (many, 2 * FILE_LIMIT, "archive")):
        status = api.get(f"/v1/jobs/{job}").json()
        assert (status["scored"], status["errors"], status["source_kind"]) == (count, 0, source)
        paths = sorted(item["path"] for item in api.get(f"/v1/jobs/{job}/results").json()["items"])
        assert all(path.startswith(("many/ward-", "few/ward-")) for path in paths), paths
    assert api.get(f"/v1/jobs/{many}").json()["source_name"] == "many.zip"

    # A read key of the same name sees the job, no confirm buttons, and its forged POST fails.
    created = pneumoscan(env, "keys", "create", "--name", "admin", "--scope", "read")
    assert created.returncode == 0, created.stderr
    reader = created.stdout.strip()
    driver.find_element(By.CSS_SELECTOR, ".who button").click()
    wait_for(lambda: "/ui/sign-in" in driver.current_url, 20, "signing out")
    sign_in(driver, url, reader)
    driver.get(f"{url}/ui/images/{second_id}")
    assert driver.find_elements(By.ID, "xray")
    assert driver.find_elements(By.ID, "confirm-pneumonia") == []
    token = driver.find_element(By.CSS_SELECTOR, 'meta[name="csrf-token"]').get_attribute("content")
    forged = post_from_page(
        driver, f"/ui/images/{second_id}/label", f"label=NORMAL&csrf_token={token}"
    )
    assert forged == 403
    after = {item["id"]: item for item in api.get(f"/v1/jobs/{job_id}/results").json()["items"]}
    assert after[second_id]["confirmed_label"] is None
    assert after[top_id]["confirmed_label"] == "PNEUMONIA"
