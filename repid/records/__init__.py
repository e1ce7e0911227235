"""Job records: the state of every job by id, readable from any process.

Workers and producers write them through one lifecycle-event handler (`RecordWriter`); a
`RecordStore` keeps them, on top of a broker's results bucket (`BucketRecordStore`).
"""

from repid.records.model import ErrorEntry, JobRecord, JobStatus, apply_event
from repid.records.store import BucketRecordStore, RecordStore, RecordWriter

__all__ = [
    "BucketRecordStore",
    "ErrorEntry",
    "JobRecord",
    "JobStatus",
    "RecordStore",
    "RecordWriter",
    "apply_event",
]
