"""Sending: each ended job's study reports, by C-STORE to PNEUMOSCAN_DICOM_DESTINATION, with
the patient and study identity the node held (or, after a restart, asked of the destination
by C-FIND); a failed send is tried again later."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from core.config import Settings
from core.config_delivery import Destination, parse_destination
from core.db import Database
from core.deliveries import due_reports, report_sent, report_skipped
from core.dicom_inbox import DicomInbox
from core.dicom_report import IDENTITY_KEYWORDS, Identity, build_report, study_findings
from core.models import DeliveryState, DicomDelivery, Job, JobStatus

log = logging.getLogger(__name__)
# Statuses of a stored instance: success, and the warnings (PS3.4 B.2.3: coercion, ...).
STORED = (0x0000, 0x0001, 0xB000, 0xB006, 0xB007)
PENDING_MATCH = (0xFF00, 0xFF01)  # a C-FIND response that carries a match
LOST_IDENTITY = (
    "the patient's identity is no longer held (the node restarted after the study arrived) "
    "and {destination} found no such study by C-FIND: the report is in "
    "GET /v1/jobs/<id>/results?format=dicom; send the study again to have it delivered"
)


class NoAssociationError(Exception):
    pass


def sending_ae(ae_title: str, timeout: float = 30) -> AE:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Comprehensive3DSRStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(Comprehensive3DSRStorage, [ImplicitVRLittleEndian])
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


@contextmanager
def association(ae: AE, destination: Destination) -> Iterator[Any]:
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except OSError as exc:
        raise NoAssociationError(f"no association with {destination}: {exc}") from exc
    if assoc.is_rejected:
        raise NoAssociationError(
            f"{destination} rejected the association (does it know our AE title?)"
        )
    if not assoc.is_established:
        raise NoAssociationError(f"no association with {destination} (is it up?)")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def find_identity(assoc: Any, study_uid: str) -> Identity | None:
    """The study's patient and study attributes, as the destination holds them (C-FIND at
    study level), or None when it has no such study."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    for keyword in IDENTITY_KEYWORDS:
        setattr(query, keyword, "")
    found: Identity | None = None
    try:
        responses = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    except (ValueError, RuntimeError) as exc:  # the peer took no C-FIND context, or aborted
        log.warning("C-FIND of study %s refused: %s", study_uid, exc)
        return None
    for status, identifier in responses:
        if status and status.Status in PENDING_MATCH and identifier is not None:
            found = {kw: identifier.get(kw) for kw in IDENTITY_KEYWORDS if identifier.get(kw)}
    return found


def store(assoc: Any, destination: Destination, report: Dataset) -> tuple[bool, str]:
    """(stored, what the peer said)."""
    status = assoc.send_c_store(report)
    if "Status" not in status:
        return False, f"{destination} sent no C-STORE status (timeout or abort)"
    code = int(status.Status)
    comment = f" ({status.ErrorComment})" if "ErrorComment" in status else ""
    return code in STORED, f"C-STORE status 0x{code:04X}{comment}"


def deliver_due(db: Database, inbox: DicomInbox, settings: Settings, ae: AE) -> int:
    """Send what is due; returns how many reports were delivered."""
    delivered = 0
    with db.session() as session:
        for delivery in due_reports(session):
            job = session.get(Job, delivery.job_id)
            if job is None or job.status != JobStatus.COMPLETED:
                status = job.status if job else "deleted"
                report_skipped(delivery, f"the job was {status}: no report is sent")
                inbox.forget(delivery.job_id)
                continue
            findings = study_findings(session, job.id).get(delivery.study_uid)
            if not findings:
                report_skipped(delivery, "no image of the study could be scored")
                inbox.forget(job.id)
                continue
            ok, said = _deliver(delivery, findings, inbox.identity(job.id), settings, ae)
            session.commit()  # each send recorded as it happens
            log.log(
                logging.INFO if ok else logging.WARNING,
                "report of job %s to %s: %s",
                job.id,
                delivery.destination,
                said,
            )
            if ok:
                delivered += 1
            if delivery.state != DeliveryState.PENDING:  # delivered, or given up on
                inbox.forget(job.id)
    return delivered


def _deliver(
    delivery: DicomDelivery,
    findings: list[Any],
    identity: Identity | None,
    settings: Settings,
    ae: AE,
) -> tuple[bool, str]:
    destination = parse_destination(delivery.destination)
    attempts, first_wait = settings.dicom_delivery_attempts, settings.dicom_retry_seconds
    try:
        with association(ae, destination) as assoc:
            if identity is None:
                identity = find_identity(assoc, delivery.study_uid)
                if identity is None:
                    said = LOST_IDENTITY.format(destination=destination)
                    report_sent(delivery, False, said, 1, first_wait)
                    return False, said
            report = build_report(
                delivery.job_id, delivery.study_uid, findings, identity, "delivery"
            )
            ok, said = store(assoc, destination, report)
            delivery.report_uid = str(report.SOPInstanceUID)
    except NoAssociationError as exc:
        ok, said = False, str(exc)
    report_sent(delivery, ok, said, attempts, first_wait)
    return ok, said
