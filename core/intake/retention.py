"""What stays on disk of a job's upload once its ingest has ended: its images, nothing else.

An upload can carry far more than the images it is scored on: DICOM originals with the
patient's name (de-identified copies are what is scored), zips sent as parts, operating-system
litter, files that are not images, the manifest of a multi-file upload. Whatever no image row
points at goes when ingest ends; a job whose ingest failed keeps nothing at all.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sqlalchemy import select

from core.db import Database
from core.intake.growing_file import writer_holds
from core.models import Image
from core.storage import Storage


def keep_only_images(db: Database, storage: Storage, job_id: str) -> int:
    """Remove every file of the job's folder that no image row of the job points at; returns
    how many went. A kept upload still to be blanked, and a file a writer still holds (an
    upload still arriving for a job that was stopped), are left to their owners."""
    job_dir = storage.job_dir(job_id)
    if not job_dir.is_dir() or storage.kept_upload_pending(job_id).exists():
        return 0  # nothing here, or finish_kept_upload must first decide about the kept upload
    with db.session() as session:
        locations = session.scalars(select(Image.location).where(Image.job_id == job_id))
        kept = {storage.resolve(location) for location in locations}
    removed = 0
    for directory, _, files in os.walk(job_dir, topdown=False):
        for name in files:
            path = Path(directory) / name
            if path not in kept and not writer_holds(path):
                path.unlink(missing_ok=True)
                removed += 1
        if directory != str(job_dir):
            with contextlib.suppress(OSError):  # not empty: it holds images
                Path(directory).rmdir()
    return removed
