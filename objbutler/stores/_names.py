"""Store URIs and bucket / container names, checked before any request is sent.

:func:`parse_store_uri` is the one parser of the URIs :func:`~objbutler.stores.open_store`
accepts; :func:`bucket_name_problem` knows S3's and Swift's naming rules. Both raise (or
return) messages that name the mistake: a slash missing, a host where the bucket goes, a
bucket name of two characters.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Literal

from objbutler.errors import InvalidBucketNameError, InvalidURIError, NotSupportedError
from objbutler.stores._base import validate_key

__all__ = ["BucketKind", "bucket_name_problem", "parse_store_uri", "validate_bucket_name"]

BucketKind = Literal["s3", "swift"]

SCHEMES = ("file", "memory", "s3", "swift")
"""The URI schemes objbutler opens (a plain path is a local directory too)."""

_FOREIGN = ("gs", "gcs", "az", "abfs", "abfss", "adl", "hdfs", "http", "https", "sftp", "ftp")
_TYPO = re.compile(r"^(s3|swift|file|memory|gs|gcs|az|abfs|https?):(?!//)(.*)$", re.IGNORECASE | re.DOTALL)
"""A known scheme not followed by ``//`` (``s3:/bucket``, ``s3:bucket``): a typo, not a relative path."""

_S3_RULES = ("S3 bucket names have 3-63 characters: lowercase letters, digits, dots and hyphens, "
             "starting and ending with a letter or digit")
_S3_LEGACY = re.compile(r"^[A-Za-z0-9._-]+$")
_S3_STRICT = re.compile(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
_S3_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_S3_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_SWIFT_MAX_BYTES = 256


def bucket_name_problem(name: str, kind: BucketKind = "s3", *, new: bool = False) -> str | None:
    """Why ``name`` cannot be an S3 bucket or Swift container name, or None if it can.

    Parameters
    ----------
    name : str
        The bucket (S3) or container (Swift) name.
    kind : {"s3", "swift"}
        Whose rules apply.
    new : bool
        Apply the rules for creating a bucket. S3 buckets made before March 2018 (in
        us-east-1) may have capitals and underscores and up to 255 characters, so a name
        is only refused for opening if no S3 bucket could ever have had it.

    Returns
    -------
    str or None
        A sentence naming the broken rule.
    """
    if not isinstance(name, str) or not name:
        return "the name is empty"
    if kind == "swift":
        if "/" in name:
            return "a Swift container name cannot contain '/'"
        if len(name.encode("utf-8")) > _SWIFT_MAX_BYTES:
            return f"a Swift container name has at most {_SWIFT_MAX_BYTES} bytes (this one has {len(name.encode())})"
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
            return "a Swift container name cannot contain control characters"
        return None
    if len(name) < 3:
        return f"it has {len(name)} character{'s' if len(name) != 1 else ''}; {_S3_RULES}"
    if not _S3_LEGACY.match(name):
        bad = sorted({ch for ch in name if not re.match(r"[A-Za-z0-9._-]", ch)})
        return f"it contains {''.join(bad)!r}; {_S3_RULES}"
    if len(name) > (63 if new else 255):
        return f"it has {len(name)} characters; {_S3_RULES}"
    if not new:
        return None
    if name != name.lower():
        return f"it has capital letters (only buckets made before 2018 may); {_S3_RULES}"
    if "_" in name:
        return f"it has an underscore (only buckets made before 2018 may); {_S3_RULES}"
    if not _S3_STRICT.match(name):
        return f"it must start and end with a letter or digit; {_S3_RULES}"
    if ".." in name:
        return f"it has two adjacent dots; {_S3_RULES}"
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        return "it looks like an IP address, which S3 does not allow as a bucket name"
    for prefix in _S3_RESERVED_PREFIXES:
        if name.startswith(prefix):
            return f"names starting with {prefix!r} are reserved by S3"
    for suffix in _S3_RESERVED_SUFFIXES:
        if name.endswith(suffix):
            return f"names ending with {suffix!r} are reserved by S3"
    return None


def validate_bucket_name(name: str, kind: BucketKind = "s3", *, new: bool = False) -> str:
    """Return ``name`` if it can be a bucket (container) name, else raise InvalidBucketNameError.

    Parameters
    ----------
    name : str
        The bucket (S3) or container (Swift) name.
    kind : {"s3", "swift"}
        Whose rules apply.
    new : bool
        Apply the stricter rules for creating one (see :func:`bucket_name_problem`).

    Raises
    ------
    InvalidBucketNameError
        Naming the rule the name breaks.
    """
    problem = bucket_name_problem(name, kind, new=new)
    if problem is not None:
        what = "S3 bucket" if kind == "s3" else "Swift container"
        raise InvalidBucketNameError(f"invalid {what} name {name!r}: {problem}")
    return name


def _typo(uri: str, scheme: str, rest: str) -> InvalidURIError:
    scheme = scheme.lower()
    if not rest:
        return InvalidURIError(f"{uri!r} names nothing after the scheme: did you mean '{scheme}://...'?")
    if scheme == "file":
        if rest.startswith("/"):
            hint = f"did you mean 'file://{rest}' (a file URI has three slashes before an absolute path)?"
        else:
            hint = f"use a plain path ({rest or '.'!r}) or file:///absolute/path"
        return InvalidURIError(f"{uri!r} is not a file URI: {hint}")
    fixed = f"{scheme}://{rest.lstrip('/')}"
    return InvalidURIError(f"{uri!r} looks like a URI with a slash missing: did you mean {fixed!r}?")


def parse_store_uri(uri: str) -> tuple[str, str, str]:
    """Check a store URI and split it into ``(scheme, location, prefix)``.

    ============================  =========================================
    URI                           result
    ============================  =========================================
    ``/data/repo``, ``repo``      ``("file", "/data/repo", "")`` (as given)
    ``file:///data/repo``         ``("file", "/data/repo", "")``
    ``memory://name``             ``("memory", "name", "")``
    ``s3://bucket/some/prefix``   ``("s3", "bucket", "some/prefix")``
    ``swift://container/prefix``  ``("swift", "container", "prefix")``
    ============================  =========================================

    Parameters
    ----------
    uri : str
        A store URI or a local path.

    Returns
    -------
    tuple of str
        The scheme, the path / name / bucket, and the prefix inside the bucket.

    Raises
    ------
    InvalidURIError
        For a malformed URI of a known scheme: a slash missing (``s3:/b``,
        ``s3:b``, ``file:/p``), no bucket (``s3://``, ``s3:///b``), a port,
        user or host where the bucket (or the ``file://`` path) goes, a query
        or a fragment, an unsafe prefix.
    InvalidBucketNameError
        For a bucket or container name no server could have (see
        :func:`bucket_name_problem`).
    NotSupportedError
        For another scheme (``gs://``, ``https://``, ...).
    """
    if not isinstance(uri, str) or not uri:
        raise InvalidURIError(f"a store URI must be a non-empty string, got {uri!r}")
    typo = _TYPO.match(uri)
    if typo:
        raise _typo(uri, typo.group(1), typo.group(2))
    if "://" not in uri:
        return "file", uri, ""
    try:
        parsed = urllib.parse.urlsplit(uri)
    except ValueError as exc:
        raise InvalidURIError(f"{uri!r} is not a valid URI: {exc}") from None
    scheme = parsed.scheme.lower()
    if not scheme:
        return "file", uri, ""
    if scheme not in SCHEMES:
        hint = ""
        if scheme in ("http", "https"):
            hint = ("; for an S3-compatible server use s3://bucket/prefix and set AWS_ENDPOINT_URL to the "
                    "server (for Swift: swift://container/prefix and ST_AUTH)")
        elif scheme not in _FOREIGN:
            hint = " (a local path containing '://'? write it as ./path)"
        raise NotSupportedError(
            f"unsupported store URI scheme {scheme!r} in {uri!r} (use a path, file://, memory://, s3://, swift://)"
            + hint
        )
    if parsed.query or parsed.fragment or uri.endswith(("?", "#")):
        raise InvalidURIError(f"{uri!r} has a query or fragment ('?' or '#'), which a store URI does not take")
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidURIError(
                f"{uri!r} names the host {parsed.netloc!r}: a file URI has three slashes before an absolute "
                f"path (file:///{parsed.netloc}{parsed.path}), or use a plain path"
            )
        path = urllib.parse.unquote(parsed.path)
        if not path:
            raise InvalidURIError(f"{uri!r} names no directory")
        return "file", path, ""
    if scheme == "memory":
        return "memory", uri.split("://", 1)[1].strip("/"), ""
    kind: BucketKind = "s3" if scheme == "s3" else "swift"
    what = "bucket" if kind == "s3" else "container"
    netloc = parsed.netloc
    if not netloc:
        inner = parsed.path.strip("/")
        hint = f": did you mean '{scheme}://{inner}'?" if inner else f" ({scheme}://{what.upper()}/prefix)"
        raise InvalidURIError(f"{uri!r} names no {what}{hint}")
    endpoint = "AWS_ENDPOINT_URL" if kind == "s3" else "ST_AUTH (or OS_AUTH_URL)"
    if "@" in netloc:
        credentials = ("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" if kind == "s3"
                       else "ST_USER and ST_KEY (or the OS_* variables)")
        raise InvalidURIError(f"{uri!r} has a user or key before '@': credentials go in {credentials}; "
                              f"the URI is {scheme}://{what.upper()}/prefix")
    if ":" in netloc:
        raise InvalidURIError(f"{uri!r} has a host and port where the {what} goes: the server goes in {endpoint}; "
                              f"the URI is {scheme}://{what.upper()}/prefix")
    validate_bucket_name(netloc, kind)
    prefix = parsed.path.strip("/")
    if prefix:
        validate_key(prefix)
    return scheme, netloc, prefix
