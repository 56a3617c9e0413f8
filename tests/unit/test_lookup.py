"""`profiler profile` and `/profile/{user_id}`: a stored hash as typed JSON."""

from __future__ import annotations

from profiling.profile import Profile
from profiling.store import public_fields
from stream.lookup import profile_json


def test_every_public_field_has_the_type_the_contract_gives_it() -> None:
    reasons = '[{"feature":"card_new","contribution":0.2,"detail":"card new to this account"}]'
    profile = Profile(
        "ada", version=2, events=3, counts={"view": 3}, spend=12.5, orders=1,
        category_scores={"books": 1.0}, segment=3, risk=0.25, risk_reasons=reasons,
        model="m",
    )  # fmt: skip
    body = profile_json(public_fields(profile))
    assert body["segment"] == 3
    assert body["risk"] == 0.25
    assert body["risk_reasons"] == [
        {"feature": "card_new", "contribution": 0.2, "detail": "card new to this account"}
    ]
    assert body["categories"] == [["books", 1.0]]
    assert (body["version"], body["events"], body["count:view"], body["orders"]) == (2, 3, 3, 1)
    assert body["spend"] == 12.5 and body["model"] == "m"
