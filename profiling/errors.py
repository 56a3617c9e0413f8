"""Errors of the profile engine.

    ProfilerError                  base of everything the engine raises
    ├── StoreConflictError         a write kept losing version races (retriable)

Bad input is not an error here: `decode_event` returns a `Rejection` value that
the edge routes to the dead-letter topic.
"""

from __future__ import annotations


class ProfilerError(Exception):
    """Base of the engine's errors. `retriable` says whether retrying may succeed."""

    retriable = False


class StoreConflictError(ProfilerError):
    """Some users' writes lost the version race on every attempt; replaying the batch is safe."""

    retriable = True
