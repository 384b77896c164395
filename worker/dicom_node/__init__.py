"""The DICOM node (`pneumoscan dicom-node`): a PACS pushes radiographs to it by C-STORE, each
stable study becomes a job, and its report goes back by C-STORE once the job has ended.

```
 PACS --C-STORE--> receiver (scp.py) --> core/dicom_inbox: study folders
                                               | idle for PNEUMOSCAN_DICOM_STUDY_IDLE_SECONDS
                                               v
                                         a job, queued for ingest like an upload
                                               | scored by the workers
                                               v
 PACS <--C-STORE-- sender (delivery.py) <-- the study's SR (core/dicom_report.py)
```

It imports no TensorFlow: a small process beside the API. One node per storage folder.
"""

from worker.dicom_node.node import DicomNode

__all__ = ["DicomNode"]
