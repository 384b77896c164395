"""A real PACS for the DICOM tests: Debian's Orthanc, on free ports and a temporary folder,
driven through its REST API."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.dataset import Dataset

from tests.support import wait_for

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
SR_MODALITY = "SR"


class Orthanc:
    """One Orthanc process; `ae_title` is how it calls itself and how peers call it."""

    def __init__(self, folder: Path, http_port: int, dicom_port: int, ae_title: str) -> None:
        self.folder, self.ae_title = folder, ae_title
        self.http_port, self.dicom_port = http_port, dicom_port
        self.url = f"http://127.0.0.1:{http_port}"
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": ae_title,
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "DicomModalities": {},
            "StableAge": 1,
            "DicomScuTimeout": 10,
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self._log = (folder / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            [ORTHANC, str(folder / "orthanc.json")], stdout=self._log, stderr=subprocess.STDOUT
        )
        self.http = httpx.Client(base_url=self.url, timeout=60)
        wait_for(self._answers, 30, f"Orthanc {ae_title} to answer")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited:\n{self.log()}")
        try:
            return self.http.get("/system").status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return (self.folder / "orthanc.log").read_text(errors="replace")

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def add_modality(self, name: str, ae_title: str, port: int) -> None:
        body = {"AET": ae_title, "Host": "127.0.0.1", "Port": port}
        self.http.put(f"/modalities/{name}", json=body).raise_for_status()

    def upload(self, dataset: Dataset) -> dict[str, Any]:
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        response = self.http.post("/instances", content=buffer.getvalue())
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def echo(self, modality: str) -> int:
        return self.http.post(f"/modalities/{modality}/echo", json={}).status_code

    def store(self, modality: str, resources: list[str]) -> httpx.Response:
        """C-STORE from Orthanc to a modality (synchronously: it answers once done)."""
        body = {"Resources": resources, "Synchronous": True}
        return self.http.post(f"/modalities/{modality}/store", json=body)

    def reports_of(self, study: str) -> list[Dataset]:
        """The SR instances Orthanc holds in a study (by Orthanc's study id)."""
        reports = []
        for series in self.http.get(f"/studies/{study}/series").json():
            if series["MainDicomTags"].get("Modality") != SR_MODALITY:
                continue
            for instance in series["Instances"]:
                data = self.http.get(f"/instances/{instance}/file").content
                reports.append(pydicom.dcmread(io.BytesIO(data)))
        return reports

    def wait_for_reports(self, study: str, count: int, timeout: float = 120) -> list[Dataset]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.http.get(f"/studies/{study}").status_code == 200:
                found = self.reports_of(study)
                if len(found) >= count:
                    return found
            time.sleep(0.5)
        raise AssertionError(
            f"no {count} report(s) in Orthanc study {study}:\n{self.log()[-3000:]}"
        )
