"""The HTTP client behind `pneumoscan submit`: send a study, follow it, fetch its CSV."""

from __future__ import annotations

import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from core.intake.entries import is_ignored
from core.intake.safe_archive import is_zip_file

FINISHED = ("completed", "failed", "cancelled")


class ClientError(RuntimeError):
    """The API refused a request or could not be reached; the message says why."""


def zip_folder(folder: Path, target: Path) -> int:
    """Store `folder`'s files in `target` (JPEGs are already compressed); returns the count."""
    count = 0
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as bundle:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder).as_posix()
            if path.is_file() and not is_ignored(relative):
                bundle.write(path, relative)
                count += 1
    return count


class ApiClient:
    def __init__(self, base_url: str, api_key: str = "", timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def submit(self, path: Path, priority: str | None = None) -> dict[str, Any]:
        """Upload a zip, or a folder zipped on the fly; returns the new job. `priority`
        (stat or routine) overrides the key's."""
        if path.is_dir():
            with tempfile.TemporaryDirectory() as scratch:
                archive = Path(scratch) / f"{path.name or 'study'}.zip"
                if zip_folder(path, archive) == 0:
                    raise ClientError(f"{path} holds no files")
                return self._upload(archive, priority)
        if path.is_file() and is_zip_file(path):
            return self._upload(path, priority)
        raise ClientError(f"{path} is neither a folder nor a zip archive")

    def _upload(self, archive: Path, priority: str | None) -> dict[str, Any]:
        # The zip as the whole body, in large chunks: no multipart encoding on either side.
        headers = {
            "Content-Type": "application/zip",
            "Content-Length": str(archive.stat().st_size),
            "Content-Disposition": f'attachment; filename="{archive.name.replace(chr(34), "_")}"',
        }
        params = {"priority": priority} if priority else {}
        return self._call(
            "POST", "/v1/jobs", content=_chunks(archive), headers=headers, params=params
        )

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def wait(
        self, job_id: str, on_update: Callable[[dict[str, Any]], None], poll_seconds: float = 1.0
    ) -> dict[str, Any]:
        while True:
            job = self.job(job_id)
            on_update(job)
            if job["status"] in FINISHED:
                return job
            time.sleep(poll_seconds)

    def download_csv(self, job_id: str, target: Path) -> None:
        with self._http.stream(
            "GET", f"/v1/jobs/{job_id}/results", params={"format": "csv"}
        ) as response:
            if response.status_code != 200:
                response.read()
                raise ClientError(_explain(response))
            with target.open("wb") as sink:
                for chunk in response.iter_bytes():
                    sink.write(chunk)

    def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the API at {self._http.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise ClientError(_explain(response))
        body: dict[str, Any] = response.json()
        return body


def _chunks(path: Path, size: int = 1024 * 1024) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(size):
            yield chunk


def _explain(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text[:200]}"
