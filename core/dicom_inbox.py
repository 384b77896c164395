"""Instances pushed by a PACS, gathered per study until the study is stable, then a job.

```
 storage/dicom/incoming/<study key>/   a study still arriving: study.json, <SOP UID>.dcm ...
        |  no new instance for PNEUMOSCAN_DICOM_STUDY_IDLE_SECONDS (renamed, atomically)
        v
 storage/dicom/closing/<job id>/       closed: becomes the job's received files
        |  job row (and its report's delivery) committed, then renamed
        v
 storage/uploads/<job id>/received/    ingested like uploaded files: same reader, same
                                       rejections, de-identified copies
```

An instance that arrives after its study closed opens a new folder: a follow-up job. A
study is keyed by its StudyInstanceUID and the key name of the peer that sent it, so two
peers' copies of one study stay two owners' jobs. Each instance is written whole (a
temporary name, fsync, rename) before the peer is told it was stored, and a node that
stopped between closing and queueing finishes the job when it starts again (`closed_studies`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from core import callbacks
from core.db import Database
from core.dicom_report import Identity
from core.errors import UnavailableError
from core.jobs import create_job
from core.models import DicomDelivery, Job, SourceKind
from core.storage import Storage
from core.submission import Enqueue

STUDY_FILE = "study.json"
MANIFEST = "manifest.json"
log = logging.getLogger(__name__)
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class ClosedStudy:
    job_id: str
    study_uid: str
    owner: str
    calling_ae: str
    folder: Path


class DicomInbox:
    def __init__(self, storage: Storage, idle_seconds: float, keep_identities: bool) -> None:
        self.storage, self.keep_identities = storage, keep_identities
        self.root = storage.root / "dicom"
        self.incoming, self.closing = self.root / "incoming", self.root / "closing"
        self.idle_seconds = idle_seconds
        # Held while an instance is written into a study folder and while one is closed, so
        # no instance lands in a folder that has just become a job.
        self._lock = threading.Lock()
        # The patient and study identity of each study, by study key, then by job id once it
        # closed: never written anywhere, it goes into the report sent back, then is
        # forgotten (a node that restarted asks the destination: worker/dicom_node/delivery).
        # Nothing is kept when no report is sent.
        self._identities: dict[str, Identity] = {}

    def store(
        self,
        owner: str,
        calling_ae: str,
        study_uid: str,
        sop_uid: str,
        data: bytes,
        identity: Identity,
    ) -> str:
        """Write one received instance (its encoded bytes, file meta included) durably into
        its study's folder, and remember (in memory) its patient and study identity; returns
        the study's key. OSError when the disk cannot take it."""
        key = hashlib.sha256(f"{owner}\0{study_uid}".encode()).hexdigest()[:32]
        name = f"{sop_uid}.dcm" if UID.match(sop_uid) else f"{_digest(sop_uid)}.dcm"
        with self._lock:
            folder = self.incoming / key
            folder.mkdir(parents=True, exist_ok=True)
            study = folder / STUDY_FILE
            if not study.exists():
                facts = {"study_uid": study_uid, "owner": owner, "calling_ae": calling_ae}
                _write_durably(study, json.dumps(facts).encode())
            _write_durably(folder / name, data)
            os.utime(folder)  # the study's last arrival, also when an instance came again
            if self.keep_identities:
                self._identities[key] = identity
        return key

    def idle_studies(self) -> list[str]:
        """Keys of the studies that received nothing for the idle time."""
        if not self.incoming.is_dir():
            return []
        cutoff = time.time() - self.idle_seconds
        return [
            folder.name for folder in self.incoming.iterdir() if folder.stat().st_mtime < cutoff
        ]

    def close(self, key: str) -> str | None:
        """Take a study out of the inbox under a new job id, returned (None if it is gone, or
        received an instance after all)."""
        job_id = uuid.uuid4().hex
        with self._lock:
            folder = self.incoming / key
            if not folder.is_dir() or folder.stat().st_mtime >= time.time() - self.idle_seconds:
                return None
            self.closing.mkdir(parents=True, exist_ok=True)
            folder.rename(self.closing / job_id)
            if key in self._identities:
                self._identities[job_id] = self._identities.pop(key)
        return job_id

    def identity(self, job_id: str) -> Identity | None:
        """The identity of a closed study's patient, while this process holds it."""
        return self._identities.get(job_id)

    def forget(self, job_id: str) -> None:
        self._identities.pop(job_id, None)

    def closed_studies(self) -> list[ClosedStudy]:
        """Studies closed and not yet jobs (also those of a node that stopped meanwhile)."""
        if not self.closing.is_dir():
            return []
        return [self._closed(folder) for folder in sorted(self.closing.iterdir())]

    def submit(
        self, db: Database, enqueue: Enqueue, closed: ClosedStudy, destination: str | None
    ) -> None:
        """The closed study as a job of its peer's key name, with the delivery of its report
        when a destination is set (and the key name's default callback); queued for ingest."""
        instances = sorted(p.name for p in closed.folder.glob("*.dcm"))
        manifest = [{"file": name, "relative_path": name} for name in instances]
        _write_durably(closed.folder / MANIFEST, json.dumps(manifest).encode())
        with db.session() as session:
            if session.get(Job, closed.job_id) is None:
                source = f"DICOM study {closed.study_uid} from {closed.calling_ae}"
                create_job(session, SourceKind.DICOM, source, closed.job_id, closed.owner)
                callbacks.attach(session, closed.job_id, closed.owner, None)
                if destination:
                    session.add(
                        DicomDelivery(
                            job_id=closed.job_id,
                            study_uid=closed.study_uid,
                            destination=destination,
                        )
                    )
        received = self.storage.received_dir(closed.job_id)
        received.parent.mkdir(parents=True, exist_ok=True)
        closed.folder.rename(received)
        try:
            enqueue(closed.job_id)
        except UnavailableError as exc:  # the job is recorded: the sweep sends it later
            log.warning("job %s queued for the sweep: %s", closed.job_id, exc)

    def _closed(self, folder: Path) -> ClosedStudy:
        facts = json.loads((folder / STUDY_FILE).read_text())
        return ClosedStudy(
            folder.name, facts["study_uid"], facts["owner"], facts["calling_ae"], folder
        )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def _write_durably(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".part")
    with partial.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
