"""Reading a stored profile back as the JSON a person or a service would want."""

from __future__ import annotations

from typing import Any

import orjson

from stream.redis_store import RedisProfileStore, connect

INTEGER_FIELDS = frozenset(
    {"version", "first_seen", "last_seen", "updated", "events", "orders", "segment"}
)
FLOAT_FIELDS = frozenset({"spend", "risk"})
JSON_FIELDS = frozenset({"categories", "risk_reasons"})


def profile_json(fields: dict[str, str]) -> dict[str, Any]:
    """Typed values of a `profile:{u}` hash: integers, floats, decoded JSON."""
    body: dict[str, Any] = {}
    for name, value in sorted(fields.items()):
        if name in INTEGER_FIELDS or name.startswith("count:"):
            body[name] = int(value)
        elif name in FLOAT_FIELDS:
            body[name] = float(value)
        elif name in JSON_FIELDS:
            body[name] = orjson.loads(value)
        else:
            body[name] = value
    return body


async def read_profile_json(
    redis_url: str, user_id: str, *, cluster: bool = False
) -> dict[str, Any] | None:
    client = connect(redis_url, cluster=cluster)
    try:
        fields = await RedisProfileStore(client).read_profile(user_id)
    finally:
        await client.aclose()
    return None if fields is None else {"user_id": user_id, **profile_json(fields)}
