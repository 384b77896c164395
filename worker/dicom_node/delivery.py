"""Sending: each ended job's study reports, by C-STORE to PNEUMOSCAN_DICOM_DESTINATION, with
the patient and study identity the node held; a failed send is tried again later."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Comprehensive3DSRStorage  # type: ignore[attr-defined]

from core.config import Settings
from core.config_delivery import Destination, parse_destination
from core.db import Database
from core.deliveries import due_reports, report_sent, report_skipped
from core.dicom_inbox import DicomInbox
from core.dicom_report import build_report, study_findings
from core.models import Job, JobStatus

log = logging.getLogger(__name__)
# Statuses of a stored instance: success, and the warnings (PS3.4 B.2.3: coercion, ...).
STORED = (0x0000, 0x0001, 0xB000, 0xB006, 0xB007)
LOST_IDENTITY = (
    "the patient's identity is no longer held (the node restarted after the study arrived): "
    "the report is in GET /v1/jobs/<id>/results?format=dicom; send the study again to have "
    "it delivered"
)


def sending_ae(ae_title: str, timeout: float = 30) -> AE:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Comprehensive3DSRStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(Comprehensive3DSRStorage, [ImplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def send(ae: AE, destination: Destination, report: Dataset) -> tuple[bool, str]:
    """(stored, what the peer said): one association, one C-STORE."""
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except OSError as exc:
        return False, f"no association with {destination}: {exc}"
    if assoc.is_rejected:
        return False, f"{destination} rejected the association (does it know our AE title?)"
    if not assoc.is_established:
        return False, f"no association with {destination} (is it up?)"
    try:
        status = assoc.send_c_store(report)
    finally:
        assoc.release()
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
                continue
            findings = study_findings(session, job.id).get(delivery.study_uid)
            if not findings:
                report_skipped(delivery, "no image of the study could be scored")
                continue
            identity = inbox.identity(job.id)
            if identity is None:
                report_sent(delivery, False, LOST_IDENTITY, 1, settings.dicom_retry_seconds)
                continue
            report = build_report(job.id, delivery.study_uid, findings, identity, "delivery")
            ok, said = send(ae, parse_destination(delivery.destination), report)
            delivery.report_uid = str(report.SOPInstanceUID)
            report_sent(
                delivery, ok, said, settings.dicom_delivery_attempts, settings.dicom_retry_seconds
            )
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
                inbox.forget(job.id)
    return delivered
