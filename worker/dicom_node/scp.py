"""Receiving: the C-STORE and C-ECHO service class provider.

Only calling AE titles in PNEUMOSCAN_DICOM_PEERS may associate (others are rejected at
association, "calling AE title not recognised"). Every storage SOP class may be offered,
so that a PACS routing a whole study gets an answer per instance: radiographs (CR, DX) are
stored, anything else is refused with 0x0122, "SOP class not supported".
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.uid import UID
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    VerificationPresentationContexts,
    evt,
)
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

from core.dicom_inbox import DicomInbox
from core.dicom_report import identity_of

log = logging.getLogger(__name__)

RADIOGRAPHS = frozenset(
    {
        UID(ComputedRadiographyImageStorage),
        UID(DigitalXRayImageStorageForPresentation),
        UID(DigitalXRayImageStorageForProcessing),
    }
)
# PS3.4 Annex B.2.3: the C-STORE statuses this provider answers with.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122


def receiving_ae(ae_title: str, peers: dict[str, str]) -> AE:
    if not peers:
        raise ValueError("PNEUMOSCAN_DICOM_PEERS is empty: no PACS could send a study")
    ae = AE(ae_title=ae_title)
    for context in [*AllStoragePresentationContexts, *VerificationPresentationContexts]:
        sop_class = UID(str(context.abstract_syntax))
        syntaxes = ALL_TRANSFER_SYNTAXES if sop_class in RADIOGRAPHS else None
        ae.add_supported_context(sop_class, syntaxes)
    ae.require_calling_aet = list(peers)
    ae.maximum_associations = 16
    return ae


class StoreHandler:
    """EVT_C_STORE: a radiograph is written whole to its study's folder before the peer
    hears "success"; the patient and study identity is kept in memory only."""

    def __init__(self, inbox: DicomInbox, peers: dict[str, str]) -> None:
        self.inbox, self.peers = inbox, peers

    def handlers(self) -> list[Any]:
        return [(evt.EVT_C_STORE, self)]

    def __call__(self, event: Any) -> int:
        sop_class = UID(event.request.AffectedSOPClassUID)
        if sop_class not in RADIOGRAPHS:
            log.info("refused %s: not a radiograph", sop_class.name)
            return SOP_CLASS_NOT_SUPPORTED
        calling = event.assoc.requestor.ae_title.strip()
        try:
            dataset = event.dataset
            study_uid = str(dataset.get("StudyInstanceUID") or "").strip()
            identity = identity_of(dataset)
        except Exception as exc:  # whatever pydicom raises: the data set cannot be read
            log.warning("from %s: unreadable data set: %s", calling, exc)
            return CANNOT_UNDERSTAND
        if not study_uid:
            log.warning("from %s: an instance without a StudyInstanceUID", calling)
            return DATA_SET_DOES_NOT_MATCH
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        try:
            self.inbox.store(
                self.peers[calling],
                calling,
                study_uid,
                sop_uid,
                event.encoded_dataset(include_meta=True),
                identity,
            )
        except OSError as exc:
            log.error("could not store an instance from %s: %s", calling, exc)
            return OUT_OF_RESOURCES
        return SUCCESS
