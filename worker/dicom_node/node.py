"""The node's process: the receiver listens in pynetdicom's threads, one loop closes stable
studies into jobs and sends the reports that are due."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from core.config import Settings
from core.db import Database
from core.dicom_inbox import DicomInbox
from core.storage import Storage
from worker.dicom_node.delivery import deliver_due, sending_ae
from worker.dicom_node.scp import StoreHandler, receiving_ae

log = logging.getLogger(__name__)
TICK_SECONDS = 0.5


class DicomNode:
    def __init__(self, settings: Settings, db: Database, enqueue: Callable[[str], None]) -> None:
        self.settings, self.db, self.enqueue = settings, db, enqueue
        self.inbox = DicomInbox(
            Storage(settings.storage_dir),
            settings.dicom_study_idle_seconds,
            keep_identities=settings.destination is not None,
        )
        self.stopping = threading.Event()
        self._receiver = receiving_ae(settings.dicom_ae_title, settings.dicom_peers)
        self._sender = sending_ae(settings.dicom_ae_title)
        self._server: object | None = None

    def run(self) -> None:
        """Listen, and close and deliver until `stop()`."""
        address = (self.settings.dicom_host, self.settings.dicom_port)
        handler = StoreHandler(self.inbox, self.settings.dicom_peers)
        self._server = self._receiver.start_server(
            address, block=False, evt_handlers=handler.handlers()
        )
        log.info("DICOM node %s listening on %s:%s", self.settings.dicom_ae_title, *address)
        next_delivery = 0.0
        try:
            while not self.stopping.wait(TICK_SECONDS):
                self.close_stable_studies()
                if self.settings.destination and time.monotonic() >= next_delivery:
                    next_delivery = time.monotonic() + self.settings.delivery_poll_seconds
                    self._deliver()
        finally:
            self._receiver.shutdown()

    def stop(self) -> None:
        self.stopping.set()

    def close_stable_studies(self) -> int:
        """Close the studies that stopped receiving, and make every closed study a job: also
        one a stopped node, or a database outage, left closed."""
        for key in self.inbox.idle_studies():
            self.inbox.close(key)
        submitted = 0
        for closed in self.inbox.closed_studies():
            try:
                self.inbox.submit(self.db, self.enqueue, closed, self.settings.dicom_destination)
            except Exception:  # the database is down: the study stays closed, tried again
                log.exception("job %s: could not record study %s", closed.job_id, closed.study_uid)
                continue
            log.info("study %s from %s: job %s", closed.study_uid, closed.calling_ae, closed.job_id)
            submitted += 1
        return submitted

    def _deliver(self) -> None:
        try:
            deliver_due(self.db, self.inbox, self.settings, self._sender)
        except Exception:  # the database is down: the next round tries again
            log.exception("sending reports failed")
