"""Signed model snapshots: pickles that are only ever unpickled after their HMAC checks out.

A River model is a Python object graph, and pickle is the only format that
keeps it whole. Unpickling runs code, so a snapshot read back from Redis
(which anyone with network access to it may write) is trusted only when its
HMAC-SHA256 under the deployment's secret matches (DESIGN.md §8). The layout:

    b"PRFSNAP2" | 32-byte HMAC-SHA256(secret, DOMAIN | context | 0x1f | payload) | payload

`context` names what the snapshot is of (the consumer group): a snapshot
signed for one group is refused for another, whose offsets and labels it
would pass for. The first format, `b"PRFSNAP1"`, signed the payload alone; it
is still read (with a warning), and the next checkpoint writes the second.

The MAC is checked with `hmac.compare_digest` before `pickle.loads` sees a
byte; an unsigned, truncated or tampered snapshot raises `SnapshotRefusedError`, and
so does a signed one that does not unpickle here (pickled by another version).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import pickle
from typing import Any, Final

from profiling.errors import ProfilerError

log = logging.getLogger("profiler.snapshots")

MAGIC: Final = b"PRFSNAP2"
UNBOUND_MAGIC: Final = b"PRFSNAP1"  # the payload alone signed, for any group
DOMAIN: Final = b"profiler model snapshot\x1f"
MAC_BYTES: Final = 32
MIN_SECRET_BYTES: Final = 16


class SnapshotRefusedError(ProfilerError):
    """A model snapshot was not loaded: it failed its signature check, is not a snapshot,
    or does not fit this worker (another format, a part missing, another segment count)."""


def _check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the model secret must be at least {MIN_SECRET_BYTES} bytes")


def sign(state: Any, secret: bytes, context: str = "") -> bytes:
    """`state` pickled and signed with `secret` for `context` (the consumer group)."""
    _check_secret(secret)
    payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    return MAGIC + _mac(secret, context, payload) + payload


def verified_load(blob: bytes, secret: bytes, context: str = "") -> Any:
    """The state in a snapshot `sign` made with the same secret and context; refuses
    anything else (an earlier, unbound snapshot is read, with a warning)."""
    _check_secret(secret)
    magic = blob[: len(MAGIC)]
    if magic not in (MAGIC, UNBOUND_MAGIC) or len(blob) <= len(MAGIC) + MAC_BYTES:
        raise SnapshotRefusedError(
            "not a signed profiler model snapshot (missing header): refusing to load it"
        )
    mac = blob[len(MAGIC) : len(MAGIC) + MAC_BYTES]
    payload = blob[len(MAGIC) + MAC_BYTES :]
    if magic == MAGIC:
        expected = _mac(secret, context, payload)
    else:
        expected = hmac.new(secret, payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise SnapshotRefusedError(
            "model snapshot signature does not match: it was altered, signed for another "
            "consumer group, or with another PROFILER_MODEL_SECRET; refusing to load it "
            "(delete the key to start fresh models)"
        )
    if magic == UNBOUND_MAGIC:
        log.warning("a model snapshot of the earlier format, signed for any group: the next "
                    "checkpoint signs it for this one")  # fmt: skip
    try:
        return pickle.loads(payload)  # verified above: these are bytes we signed
    except Exception as exc:  # signed by a version whose classes are not this one's
        raise SnapshotRefusedError(
            f"model snapshot pickled by another version cannot be read here "
            f"({type(exc).__name__}: {exc}): run the version that wrote it, or delete "
            "the key to start fresh models"
        ) from exc


def _mac(secret: bytes, context: str, payload: bytes) -> bytes:
    signed = hmac.new(secret, DOMAIN + context.encode() + b"\x1f", hashlib.sha256)
    signed.update(payload)
    return signed.digest()
