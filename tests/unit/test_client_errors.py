"""The one errno table of the FUSE adapter, and the HTTP error-body translation."""

from __future__ import annotations

import errno

import pytest

from cloudfs import errors
from cloudfs.fuse_ops import fuse_errno
from cloudfs.protocol import error_from_response

# protocol code -> (status, errno the mount must answer) — docs/protocol.md "Error codes"
PROTOCOL_ERRNO = {
    "unauthorized": (401, errno.EACCES),
    "bad_request": (400, errno.EINVAL),
    "invalid_name": (400, errno.EINVAL),
    "name_too_long": (400, errno.ENAMETOOLONG),
    "bad_block_id": (400, errno.EINVAL),
    "hash_mismatch": (400, errno.EIO),
    "not_found": (404, errno.ENOENT),
    "exists": (409, errno.EEXIST),
    "not_empty": (409, errno.ENOTEMPTY),
    "not_a_directory": (409, errno.ENOTDIR),
    "is_a_directory": (409, errno.EISDIR),
    "invalid_move": (409, errno.EINVAL),
    "too_large": (413, errno.EFBIG),
    "quota_exceeded": (507, errno.ENOSPC),
    "server_full": (507, errno.ENOSPC),
}


@pytest.mark.parametrize("code", sorted(PROTOCOL_ERRNO))
def test_protocol_codes_map_to_the_documented_errno(code: str) -> None:
    status, expected = PROTOCOL_ERRNO[code]
    exc = error_from_response(status, {"error": code, "message": "m"})
    assert isinstance(exc, errors.CloudfsError)
    assert fuse_errno(exc) == expected, f"{code}: got {fuse_errno(exc)}, want {expected}"


def test_server_full_is_its_own_error_not_the_users_quota() -> None:
    exc = error_from_response(507, {"error": "server_full", "message": "disk full"})
    assert type(exc) is errors.ServerFullError, type(exc)
    assert not exc.temporary and fuse_errno(exc) == errno.ENOSPC
    quota = error_from_response(507, {"error": "quota_exceeded", "message": "m"})
    assert not isinstance(quota, errors.ServerFullError)


def test_special_codes_become_their_own_exceptions() -> None:
    exc = error_from_response(409, {"error": "missing_blocks", "message": "m", "missing": ["ab"]})
    assert isinstance(exc, errors.MissingBlocksError) and exc.missing == ["ab"]
    exc = error_from_response(
        409,
        {"error": "version_conflict", "message": "m", "current_version": 4, "committed_by": "desk"},
    )
    assert isinstance(exc, errors.VersionConflictError)
    assert exc.details["current_version"] == 4 and exc.details["committed_by"] == "desk"
    assert isinstance(
        error_from_response(410, {"error": "cursor_expired"}), errors.CursorExpiredError
    )


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_temporary(status: int) -> None:
    exc = error_from_response(status, {"message": "boom"})
    assert isinstance(exc, errors.TemporaryError) and exc.temporary
    assert fuse_errno(exc) == errno.EIO


def test_local_error_classes() -> None:
    assert fuse_errno(errors.OperationNotPermittedError()) == errno.EPERM
    assert fuse_errno(errors.CorruptBlockError()) == errno.EIO
    assert fuse_errno(errors.NotSupportedError()) == errno.EOPNOTSUPP
    assert fuse_errno(OSError(errno.ENOSPC, "disk full")) == errno.ENOSPC
    assert fuse_errno(RuntimeError("bug")) == errno.EIO


def test_unknown_bodies_still_give_an_error() -> None:
    assert isinstance(error_from_response(404, "not json"), errors.NodeNotFoundError)
    assert isinstance(error_from_response(418, {}), errors.ProtocolError)
