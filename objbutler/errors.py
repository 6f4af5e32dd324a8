"""The one exception tree of objbutler.

Every error objbutler raises on purpose derives from :class:`ObjButlerError`.
Where a builtin exception means the same thing, the objbutler error also
derives from it, so ``except FileNotFoundError`` keeps working::

    ObjButlerError (Exception)
    ├── NotFoundError (FileNotFoundError)        a key, dataset or repository is missing
    │   ├── RepositoryNotFoundError              the store is there, no repository in it
    │   └── BucketNotFoundError                  the bucket (S3) or container (Swift) is missing
    ├── AlreadyExistsError (FileExistsError)     a create-only write found something there
    ├── PreconditionFailedError                  a conditional write lost (stale etag)
    ├── ConflictError                            a registry commit cannot happen as asked
    │                                            (data ID taken, dataset type mismatch, lost race)
    ├── BatchError                               some items of a put_many/batch failed (the rest
    │                                            committed); ``.results`` holds each item's outcome
    ├── FormatError (ValueError)                 stored bytes are not what they claim to be
    │   └── ConfigError                          a repository setting is invalid (names the field)
    ├── InvalidKeyError (ValueError)             an object key or data ID value is unsafe
    │   ├── InvalidURIError                      a store URI is malformed (``s3:/b``, ``s3://``, ...)
    │   │   └── InvalidBucketNameError           a bucket or container name breaks the naming rules
    │   └── AmbiguousRunError                    a data ID names datasets in several runs and no run
    │                                            was given (``.runs`` lists them; pass ``run=``)
    ├── InvalidCutoutError (ValueError)          a box or sky position cannot be cut as asked
    ├── NotSupportedError (NotImplementedError)  the backend lacks the primitive asked for
    ├── OfflineError                             offline mode and the object is not cached
    └── StoreError                               the backend failed (after retries)
        ├── TransientStoreError                  a retryable failure (5xx, throttling, reset)
        ├── RangeNotSatisfiableError             a byte range starts at or past the object's end
        │                                        (HTTP 416; ``get_ranges`` answers it with ``b""``)
        └── CommitOutcomeUnknownError            a commit write failed and its outcome cannot be
                                                 read back: the data object is kept (fsck tells)

The tree is locked by ``tests/test_errors.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AlreadyExistsError",
    "AmbiguousRunError",
    "BatchError",
    "BucketNotFoundError",
    "CommitOutcomeUnknownError",
    "ConfigError",
    "ConflictError",
    "FormatError",
    "InvalidCutoutError",
    "InvalidBucketNameError",
    "InvalidKeyError",
    "InvalidURIError",
    "NotFoundError",
    "NotSupportedError",
    "ObjButlerError",
    "OfflineError",
    "PreconditionFailedError",
    "RangeNotSatisfiableError",
    "RepositoryNotFoundError",
    "StoreError",
    "TransientStoreError",
]


class ObjButlerError(Exception):
    """Root of every error objbutler raises on purpose."""


class NotFoundError(ObjButlerError, FileNotFoundError):
    """A key, dataset, dataset type or repository does not exist."""


class RepositoryNotFoundError(NotFoundError):
    """The store can be reached but holds no objbutler repository (no ``objbutler.json``).

    Attributes
    ----------
    uri : str or None
        The repository URI that was opened.
    """

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


class BucketNotFoundError(NotFoundError):
    """The bucket (S3) or container (Swift) itself does not exist, not just a key in it.

    Attributes
    ----------
    bucket : str or None
        The bucket or container name.
    kind : str
        ``"bucket"`` or ``"container"``.
    where : str or None
        The endpoint (or auth URL) that was asked.
    """

    def __init__(self, message: str, *, bucket: str | None = None, kind: str = "bucket",
                 where: str | None = None) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.kind = kind
        self.where = where


class AlreadyExistsError(ObjButlerError, FileExistsError):
    """A create-only write found an object (or repository) already there."""


class PreconditionFailedError(ObjButlerError):
    """A conditional write was refused because the object changed (stale etag)."""


class ConflictError(ObjButlerError):
    """A registry commit cannot happen: the data ID is taken, types disagree, or a race was lost.

    Parameters
    ----------
    message : str
        What happened.
    conflicts : sequence of str, optional
        The ids of the datasets of the refused commit whose data ID is taken
        (empty when the refusal is not about particular datasets, e.g. a
        dataset type that disagrees). A group commit drops exactly these and
        commits the rest.
    """

    def __init__(self, message: str = "", conflicts: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.conflicts: tuple[str, ...] = tuple(conflicts)


class BatchError(ObjButlerError):
    """Some items of a group put (``Butler.put_many``, ``Butler.batch``) failed; the others committed.

    Parameters
    ----------
    message : str
        What happened (how many items failed, the first failure).
    results : sequence
        Per item, in the order given: the committed ``DatasetRef`` or the
        exception that item got (``ConflictError``, ``FormatError``,
        ``StoreError``, ``CommitOutcomeUnknownError``, ...).

    Attributes
    ----------
    results : list
        As given.
    failures : list of (int, BaseException)
        The failed items' indices and exceptions.
    """

    def __init__(self, message: str, results: Sequence[object]) -> None:
        super().__init__(message)
        self.results: list[object] = list(results)

    @property
    def failures(self) -> list[tuple[int, BaseException]]:
        """The index and exception of every item that failed, in order."""
        return [(i, r) for i, r in enumerate(self.results) if isinstance(r, BaseException)]


class FormatError(ObjButlerError, ValueError):
    """Stored bytes (a dataset, a log entry, a checkpoint) are corrupt or not of the claimed format."""


class ConfigError(FormatError):
    """A repository setting (an ``objbutler.json`` field or a ``Butler.create`` argument) is invalid."""


class InvalidKeyError(ObjButlerError, ValueError):
    """An object key or data ID value is unsafe (``..``, absolute, control characters, ...)."""


class InvalidURIError(InvalidKeyError):
    """A store URI is malformed: a known scheme with a slash missing (``s3:/b/repo``), no bucket
    (``s3://``), a host in a ``file://`` URI, an endpoint or a query where the bucket goes, ..."""


class InvalidBucketNameError(InvalidURIError):
    """A bucket (S3) or container (Swift) name breaks the service's naming rules.

    Raised before any request is sent. S3's rules for a new bucket: 3-63 characters of lowercase
    letters, digits, dots and hyphens, starting and ending with a letter or digit, no ``..``, not
    an IP address; buckets made before 2018 may also have capitals and underscores (up to 255
    characters), so opening such a name is allowed, creating one is not. Swift: 1-256 bytes, no ``/``.
    """


class AmbiguousRunError(InvalidKeyError):
    """A dataset type and data ID were given without a run, and several runs hold that data ID.

    A subclass of :class:`InvalidKeyError` (what was raised before), so code catching that keeps working.

    Parameters
    ----------
    message : str
        What happened.
    runs : sequence of str
        The runs that hold the data ID.
    """

    def __init__(self, message: str = "", runs: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.runs: tuple[str, ...] = tuple(runs)


class InvalidCutoutError(ObjButlerError, ValueError):
    """A cutout request cannot be served as asked (e.g. a box outside the image in strict mode)."""


class NotSupportedError(ObjButlerError, NotImplementedError):
    """The backend does not have the primitive asked for (e.g. compare-and-swap on Swift)."""


class OfflineError(ObjButlerError):
    """The butler is offline and the object needed is not in the local cache."""


class StoreError(ObjButlerError):
    """The storage backend failed in a way that is not one of the specific errors above."""


class TransientStoreError(StoreError):
    """A failure worth retrying: a 5xx answer, throttling, a reset connection, a timeout."""


class RangeNotSatisfiableError(StoreError):
    """A byte range starts at or past the end of the object (an HTTP 416 answer)."""


class CommitOutcomeUnknownError(StoreError):
    """A registry commit write failed and whether it landed cannot be read back.

    The data object is kept (deleting it could leave a dangling entry); ``objbutler fsck``
    reports it as an orphan if the commit did not land, and ``vacuum`` removes it.
    """
