"""Signed model snapshots: pickles that are only ever unpickled after their HMAC checks out.

A River model is a Python object graph, and pickle is the only format that
keeps it whole. Unpickling runs code, so a snapshot read back from Redis
(which anyone with network access to it may write) is trusted only when its
HMAC-SHA256 under the deployment's secret matches (DESIGN.md §8). The layout:

    b"PRFSNAP1" | 32-byte HMAC-SHA256(secret, payload) | payload (pickle)

The MAC is checked with `hmac.compare_digest` before `pickle.loads` sees a
byte; an unsigned, truncated or tampered snapshot raises `SnapshotRefusedError`.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any, Final

from profiling.errors import ProfilerError

MAGIC: Final = b"PRFSNAP1"
MAC_BYTES: Final = 32
MIN_SECRET_BYTES: Final = 16


class SnapshotRefusedError(ProfilerError):
    """A model snapshot was not loaded: it failed its signature check, is not a snapshot,
    or does not fit this worker (another format, a part missing, another segment count)."""


def _check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the model secret must be at least {MIN_SECRET_BYTES} bytes")


def sign(state: Any, secret: bytes) -> bytes:
    """`state` pickled and signed with `secret`."""
    _check_secret(secret)
    payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    mac = hmac.new(secret, payload, hashlib.sha256).digest()
    return MAGIC + mac + payload


def verified_load(blob: bytes, secret: bytes) -> Any:
    """The state in a snapshot made by `sign` with the same secret; refuses anything else."""
    _check_secret(secret)
    if not blob.startswith(MAGIC) or len(blob) <= len(MAGIC) + MAC_BYTES:
        raise SnapshotRefusedError(
            "not a signed profiler model snapshot (missing header): refusing to load it"
        )
    mac = blob[len(MAGIC) : len(MAGIC) + MAC_BYTES]
    payload = blob[len(MAGIC) + MAC_BYTES :]
    expected = hmac.new(secret, payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise SnapshotRefusedError(
            "model snapshot signature does not match: it was altered, or signed with another "
            "PROFILER_MODEL_SECRET; refusing to load it (delete the key to start fresh models)"
        )
    return pickle.loads(payload)  # verified above: these are bytes we signed
