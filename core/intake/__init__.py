"""Intake: what an upload or an import folder becomes, entry by entry, before ingest records it.

- `entries`: the vocabulary (candidates, rejections, the job's limits and budget, errors).
- `safe_archive`: the safe zip reader (names, sizes, ratios and links distrusted).
- `growing_file`: a file still being written by another process, and `writer_holds`.
- `streaming_zip`: a zip read while its upload arrives, checked against its central directory.
- `kept_members`: stored images read where they lie in the kept upload, the rest blanked.
- `folders`: an import-volume folder read in place; `received`: files sent one by one.
- `classify`: an entry made into an image row (DICOM de-identified) or a refusal.
- `retention`: only the images stay once ingest has ended.
"""
