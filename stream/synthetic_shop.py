"""A seeded synthetic shop: the event stream behind the demo, the benchmarks and the tests.

Real data sets (see `stream.file_import`) carry too few fields for every feature
the worker computes (devices, countries, cards, logins, searches, reviews all at
once), so this module makes a believable shop instead: a catalog of products
with English titles across ten families, users with home countries, devices,
cards and 1-3 favourite families, and sessions that log in, search, browse,
fill and empty a cart, buy and review. A few sessions look like account
takeover (failed logins, then a new device, country and card) so the risk model
has something to find.

Everything is drawn from the seed (numpy for the catalog and the users, one
`random.Random` per call for the stream), so the same arguments give the same
bytes on every machine. `records` wraps the valid stream with producer re-sends
and malformed records of many kinds, in exact proportions, for DLQ and dedupe
tests. No I/O happens here.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final

import msgspec
import numpy as np

EVENT_MIX: Final = {
    "view": 0.60,
    "click": 0.15,
    "search": 0.08,
    "add_to_cart": 0.06,
    "remove_from_cart": 0.01,
    "purchase": 0.02,
    "review": 0.01,
    "login": 0.07,
}
"""The target share of each type; logins come from session starts, the rest are drawn."""

_BROWSE_TYPES: Final = tuple(t for t in EVENT_MIX if t != "login")
_BROWSE_CUM: Final = tuple(accumulate(EVENT_MIX[t] for t in _BROWSE_TYPES))
# Sessions open with ~1.17 logins (retries after failures; 1% give up, 1.5% are short
# takeover-like visits), so this many browse steps on average make logins ~7% of events.
_MEAN_BROWSE_STEPS: Final = 1.19 * (1 - EVENT_MIX["login"]) / EVENT_MIX["login"]
_STEPS_SIGMA: Final = 0.8
_STEPS_MU: Final = math.log(_MEAN_BROWSE_STEPS) - _STEPS_SIGMA**2 / 2
_RISKY_SESSION: Final = 0.015
_DUPLICATE_WINDOW: Final = 2048  # re-sends repeat one of the last records, like a producer retry

_COUNTRIES: Final = (
    ("US", 30, "USD"), ("GB", 12, "GBP"), ("DE", 10, "EUR"), ("FR", 8, "EUR"), ("CA", 6, "CAD"),
    ("ES", 5, "EUR"), ("IT", 5, "EUR"), ("NL", 4, "EUR"), ("AU", 4, "AUD"), ("JP", 4, "JPY"),
    ("PL", 3, "PLN"), ("SE", 3, "SEK"), ("IE", 2, "EUR"), ("BE", 2, "EUR"), ("AT", 2, "EUR"),
)  # fmt: skip
RATES: Final = {  # units of each currency the shop sells in per US dollar
    "USD": 1.0, "EUR": 0.92, "GBP": 0.79, "CAD": 1.36, "AUD": 1.52, "JPY": 150.0, "PLN": 4.0,
    "SEK": 10.5,
}  # fmt: skip
_PAYMENTS: Final = (
    ("card", 0.70),
    ("paypal", 0.85),
    ("apple_pay", 0.93),
    ("gift_card", 0.97),
    ("bank_transfer", 1.0),
)
_RATING_CUM: Final = (0.09, 0.15, 0.25, 0.45, 1.0)  # ratings 1..5, J-shaped like real shops
_REVIEW_LINES: Final = (
    ("Broke on first use, do not buy.", "Terrible {noun}, I returned it.",
     "Nothing like the photos.", "Waste of money."),
    ("Disappointed with this {noun}.", "Stopped working after two weeks.",
     "Cheap materials for the price."),
    ("It's okay.", "Average {noun}, does what it says.", "Shipping was slow but the item is fine."),
    ("Good {noun} overall.", "Does the job, minor issues with the packaging.",
     "Nice quality, runs a little small."),
    ("Absolutely love this {noun}!", "Works perfectly and arrived fast.",
     "Great value for the price.", "Exactly as described, would buy again."),
)  # fmt: skip
_QUERY_FORMS: Final = (
    "{noun}", "{brand} {noun}", "cheap {noun}", "best {noun}", "{attr} {noun}", "{noun} {variant}",
    "{brand} {model}", "{noun} sale", "gift {noun}",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Family:
    """Vocabulary of one product family; every slot is a `|`-separated list."""

    name: str
    brands: str
    models: str
    attrs: str
    variants: str
    categories: tuple[tuple[str, str, float], ...]  # (category, nouns, median price in USD)
    templates: tuple[str, ...] = (
        "{brand} {model} {attr} {noun}, {variant}",
        "{brand} {noun} {model} - {attr}, {variant}",
        "{brand} {attr} {noun}",
    )


_FAMILIES: Final = (
    _Family("phones", "Apple|Samsung|Google|Xiaomi|OnePlus|Motorola|Nokia",
            "Pro|Ultra|Lite|Plus|Edge|Neo|Max|Mini", "128GB|256GB|512GB|Dual SIM|6.7-inch|5G",
            "Midnight Black|Silver|Ocean Blue|Graphite|Mint Green",
            (("electronics.smartphone", "Smartphone|Unlocked Smartphone|Android Phone", 480.0),
             ("electronics.phone_accessory",
              "Phone Case|Screen Protector|USB-C Fast Charger|Wireless Charger", 19.0))),
    _Family("laptops", "Lenovo|Dell|HP|Apple|ASUS|Acer|Microsoft",
            "ThinkPad|XPS|Envy|ZenBook|Swift|Surface|Inspiron|Vivobook",
            "16GB RAM|512GB SSD|Intel Core i7|Ryzen 7|14-inch|15.6-inch",
            "Space Gray|Platinum|Black|Silver",
            (("electronics.laptop", "Laptop|Ultrabook|2-in-1 Laptop|Gaming Laptop", 950.0),
             ("electronics.headphones",
              "Wireless Headphones|Noise Cancelling Earbuds|Gaming Headset", 89.0))),
    _Family("shoes", "Nike|Adidas|New Balance|ASICS|Puma|Skechers|Vans|Timberland",
            "Air|Ultraboost|Gel|Classic|Runner|Trail|Court|Flex", "Men's|Women's|Kids'|Wide Fit",
            "Size 9|Size 10|Size 8|Size 11|Black/White|Navy",
            (("fashion.shoes", "Running Shoes|Sneakers|Hiking Boots|Sandals|Slip-On Shoes", 75.0),
             ("fashion.clothing", "Hoodie|T-Shirt|Rain Jacket|Leggings|Denim Jeans", 35.0))),
    _Family("kitchen", "KitchenAid|Ninja|Cuisinart|Instant Pot|OXO|Le Creuset|Breville",
            "Pro|Deluxe|Classic|Duo|Artisan|Essential", "Stainless Steel|Nonstick|6-Quart|1200W",
            "Red|Black|White|Cream",
            (("home.kitchen", "Blender|Air Fryer|Stand Mixer|Chef's Knife|Dutch Oven|Kettle",
              65.0),
             ("home.coffee", "Espresso Machine|Coffee Grinder|French Press|Drip Coffee Maker",
              110.0))),
    _Family("books", "Penguin|HarperCollins|Vintage|Random House|Scribner|Bloomsbury",
            "", "The Silent|The Last|The Hidden|A Thousand|The Midnight|The Golden|The Lost",
            "Paperback|Hardcover|Kindle Edition",
            (("books.fiction", "Garden|River: A Novel|Orchard|Letters|Kingdom|Lighthouse: A Novel|"
              "Station", 14.0),
             ("books.cooking", "Kitchen Cookbook|Table: Simple Recipes|Bakery Book", 24.0),
             ("books.business", "Habits|Playbook|Strategy|Leader", 18.0)),
            ("{attr} {noun} ({variant})",)),
    _Family("toys", "LEGO|Hasbro|Mattel|Melissa & Doug|Ravensburger|Hot Wheels",
            "City|Classic|Creator|Junior|Deluxe", "1000-Piece|Wooden|Remote Control|STEM",
            "Ages 3+|Ages 6+|Ages 8+",
            (("toys.building", "Building Set|Construction Kit|Marble Run", 45.0),
             ("toys.games", "Board Game|Jigsaw Puzzle|Card Game|Race Car", 22.0))),
    _Family("beauty", "L'Oreal|CeraVe|Neutrogena|Maybelline|Olaplex|The Ordinary|Dove",
            "Hydra|Daily|Revitalift|Ultra|Pure", "Fragrance-Free|SPF 30|Vitamin C|Hyaluronic",
            "1.7 oz|8 fl oz|Pack of 2",
            (("beauty.skincare", "Moisturizing Cream|Face Serum|Sunscreen|Cleanser", 18.0),
             ("beauty.makeup", "Mascara|Foundation|Lipstick|Eyeliner", 11.0),
             ("beauty.haircare", "Shampoo|Hair Mask|Conditioner|Hair Dryer", 16.0))),
    _Family("sports", "Garmin|Fitbit|Bowflex|Coleman|Yeti|Wilson|Osprey|Giant",
            "Forerunner|Charge|Explorer|Rambler|Trail|Summit", "Waterproof|Adjustable|Ultralight",
            "Black|Olive|Blue|Orange",
            (("sports.fitness", "Yoga Mat|Adjustable Dumbbells|Fitness Tracker|Resistance Bands",
              45.0),
             ("sports.outdoor", "Camping Tent|Hiking Backpack|Sleeping Bag|Insulated Bottle",
              70.0),
             ("sports.cycling", "Bike Helmet|Road Bike|Bike Light Set", 60.0))),
    _Family("garden", "Gardena|Fiskars|Scotts|Greenworks|Miracle-Gro|Weber",
            "Pro|Comfort|Classic|Spirit|EasyCut", "Cordless|40V|Heavy Duty|Organic|Ergonomic",
            "Green|Black|50 ft|Pack of 3",
            (("garden.tools", "Pruning Shears|Garden Hose|Lawn Mower|Leaf Blower", 55.0),
             ("garden.outdoor_living", "Gas Grill|Patio Umbrella|Raised Garden Bed", 180.0))),
    _Family("grocery", "Lavazza|Starbucks|Nature Valley|Barilla|Kind|Twinings|Lindt",
            "Classico|Original|Gold|Excellence|Select", "Organic|Whole Bean|Gluten-Free|Dark",
            "12 oz|2 lb|Pack of 6|Box of 24",
            (("grocery.coffee_tea", "Coffee|Espresso Beans|Green Tea|Earl Grey Tea", 12.0),
             ("grocery.snacks", "Granola Bars|Chocolate Bar|Trail Mix|Protein Bars", 7.0),
             ("grocery.pantry", "Pasta|Olive Oil|Pasta Sauce|Honey", 6.0))),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Product:
    """One catalog entry; `fields` is what view/click/cart/purchase events carry."""

    index: int
    family: int
    category: int
    fields: dict[str, str]  # item_id, title, category, brand
    price_usd: float
    noun: str


@dataclass(frozen=True, slots=True)
class Catalog:
    """Products plus the lookup tables a session needs on every step."""

    products: tuple[Product, ...]
    categories: tuple[str, ...]
    family_categories: tuple[tuple[int, ...], ...]
    category_products: tuple[tuple[int, ...], ...]  # most popular first
    category_cum: tuple[tuple[float, ...], ...]  # Zipf popularity, cumulative
    queries: tuple[tuple[str, ...], ...]  # per category
    offers: dict[str, list[dict[str, Any]]]  # per currency, per product: fields + price


def _split(slot: str) -> list[str]:
    return slot.split("|") if slot else [""]


def _choose(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _title(fam: _Family, nouns: list[str], rng: np.random.Generator) -> tuple[str, str, str]:
    """One product title from the family's templates; returns (title, brand, noun)."""
    model = _choose(rng, _split(fam.models))
    if model and rng.random() < 0.6:
        model = f"{model} {int(rng.integers(2, 60))}"
    slots = {
        "brand": _choose(rng, _split(fam.brands)),
        "model": model,
        "noun": _choose(rng, nouns),
        "attr": _choose(rng, _split(fam.attrs)),
        "variant": _choose(rng, _split(fam.variants)),
    }
    title = " ".join(_choose(rng, fam.templates).format(**slots).split())
    return title, slots["brand"], slots["noun"]


def _queries(fam: _Family, nouns: list[str], rng: np.random.Generator) -> tuple[str, ...]:
    """Up to forty distinct lower-case queries for one category, shaped like real searches."""
    out: list[str] = []
    for _ in range(80):
        query = _choose(rng, _QUERY_FORMS).format(
            noun=_choose(rng, nouns),
            brand=_choose(rng, _split(fam.brands)),
            model=_choose(rng, _split(fam.models)),
            attr=_choose(rng, _split(fam.attrs)),
            variant=_choose(rng, _split(fam.variants)),
        )
        out.append(" ".join(query.lower().split()))
    return tuple(dict.fromkeys(out))[:40]


def build_catalog(products: int, seed: int) -> Catalog:
    """Draw `products` products spread over every category, prices log-normal per category."""
    rng = np.random.default_rng([seed, 0])
    cats = [(f, c) for f, fam in enumerate(_FAMILIES) for c in fam.categories]
    rows: list[Product] = []
    members: list[list[int]] = [[] for _ in cats]
    for i in range(products):
        k = i if i < len(cats) else int(rng.integers(len(cats)))  # every category is stocked
        f, (category, nouns, median) = cats[k]
        title, brand, noun = _title(_FAMILIES[f], nouns.split("|"), rng)
        price = round(float(np.clip(median * rng.lognormal(0.0, 0.45), 0.99, 1e6)), 2)
        fields = {"item_id": f"p{i:06d}", "title": title, "category": category, "brand": brand}
        noun = "book" if category.startswith("books.") else noun.split(":")[0]
        rows.append(Product(i, f, k, fields, price, noun))
        members[k].append(i)
    for m in members:
        rng.shuffle(m)  # popularity rank within the category
    return Catalog(
        products=tuple(rows),
        categories=tuple(c[0] for _, c in cats),
        family_categories=tuple(
            tuple(k for k, (f, _) in enumerate(cats) if f == fi) for fi in range(len(_FAMILIES))
        ),
        category_products=tuple(tuple(m) for m in members),
        category_cum=tuple(
            tuple(accumulate(1.0 / (r + 1) ** 0.9 for r in range(len(m)))) for m in members
        ),
        queries=tuple(_queries(_FAMILIES[f], c[1].split("|"), rng) for f, c in cats),
        offers={cur: [_offer(p, cur) for p in rows] for cur in RATES},
    )


def _offer(p: Product, currency: str) -> dict[str, Any]:
    """The fields an item event carries, built once per product and currency."""
    return {**p.fields, "price": _local_price(p.price_usd, currency), "currency": currency}


def _local_price(usd: float, currency: str) -> float:
    local = usd * RATES[currency]
    return float(round(local)) if currency == "JPY" else round(local, 2)


def shop_rates(base: str) -> dict[str, float] | None:
    """The shop's own rates with `base` as the unit (`PROFILER_CURRENCY_RATES`); None when
    the shop does not sell in `base`."""
    if base not in RATES:
        return None
    return {code: rate / RATES[base] for code, rate in RATES.items() if code != base}


def _mix64(x: int) -> int:
    """splitmix64 finaliser: opaque-looking, stable ids for devices, cards and addresses."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


@dataclass(frozen=True, slots=True)
class _Users:
    """Per-user traits as plain lists (fast to index on every session start)."""

    ids: list[str]
    country: list[int]
    devices: list[int]
    cards: list[int]
    families: list[list[int]]
    family_cum: list[list[float]]
    activity_cum: list[float]


def _build_users(users: int, seed: int) -> _Users:
    """Home country, 1-3 devices, 1-2 cards, 1-3 favourite families, log-normal activity."""
    rng = np.random.default_rng([seed, 1])
    n_fam = len(_FAMILIES)
    weights = np.array([w for _, w, _ in _COUNTRIES], dtype=float)
    country = rng.choice(len(_COUNTRIES), size=users, p=weights / weights.sum())
    devices = rng.choice([1, 2, 3], size=users, p=[0.55, 0.35, 0.10])
    cards = rng.choice([1, 2], size=users, p=[0.8, 0.2])
    # Weighted sampling without replacement (Gumbel top-k): some families are more popular.
    popularity = np.log(np.linspace(2.0, 1.0, n_fam))
    top = np.argsort(-(popularity + rng.gumbel(size=(users, n_fam))), axis=1)[:, :3]
    k = rng.choice([1, 2, 3], size=users, p=[0.3, 0.45, 0.25])
    share = rng.dirichlet([2.0, 2.0, 2.0], size=users) * (np.arange(3) < k[:, None])
    activity = np.cumsum(rng.lognormal(0.0, 1.0, size=users))
    return _Users(
        ids=[f"u{i:07d}" for i in range(users)],
        country=country.tolist(),
        devices=devices.tolist(),
        cards=cards.tolist(),
        families=top.tolist(),
        family_cum=np.cumsum(share, axis=1).tolist(),
        activity_cum=activity.tolist(),
    )


class _Session:
    """One visit: who, from where, what they look at; the cart is the user's, kept across visits."""

    __slots__ = (
        "card_fp",
        "cart",
        "category",
        "country",
        "currency",
        "device_id",
        "family",
        "ip",
        "logins",
        "mix",
        "offers",
        "session_id",
        "steps",
        "user",
        "user_id",
        "views",
    )

    def __init__(
        self, user: int, user_id: str, session_id: str, logins: list[bool], steps: int
    ) -> None:
        self.user, self.user_id = user, user_id
        self.offers: list[dict[str, Any]] = []
        self.session_id = session_id
        self.logins = logins
        self.steps = steps
        self.views: list[Product] = []
        self.cart: list[tuple[Product, int]] = []
        self.mix: tuple[float, ...] = _BROWSE_CUM
        self.family = self.category = 0
        self.device_id = self.card_fp = self.ip = self.country = self.currency = ""


_Plan = tuple[list[bool], int, bool]  # login outcomes, browse steps, account-takeover-like
# An account-takeover-like session: failed logins, then a shopping spree.
_RISKY_CUM: Final = tuple(accumulate((0.35, 0.1, 0.05, 0.15, 0.0, 0.35, 0.0)))
_LOGIN_PLANS: Final = (
    (0.93, (True,)),
    (0.97, (False, True)),
    (0.99, (False, False, True)),
    (1.0, (False, False, False)),
)


def _plan(rng: random.Random) -> _Plan:
    """How a visit logs in and how long it browses, drawn from its own stream.

    A separate stream lets `events` count the sessions it needs before it
    starts, so the sessions fill [start_ms, end_ms] exactly.
    """
    if rng.random() < _RISKY_SESSION:
        logins = [False] * (2 + _below(rng, 4)) + [True]
        return logins, 1 + _below(rng, 6), True
    r = rng.random()
    logins = list(next(plan for cut, plan in _LOGIN_PLANS if r < cut))
    steps = max(1, round(rng.lognormvariate(_STEPS_MU, _STEPS_SIGMA))) if logins[-1] else 0
    return logins, steps, False


def _below(rng: random.Random, n: int) -> int:
    """A uniform int in [0, n): `randrange` costs four times as much on the hot path."""
    return int(rng.random() * n)


def _ip(x: int) -> str:
    return f"{11 + x % 212}.{(x >> 8) & 255}.{(x >> 16) & 255}.{1 + (x >> 24) % 254}"


def _qty(rng: random.Random) -> int:
    r = rng.random()
    return 1 if r < 0.85 else 2 if r < 0.95 else 3 + _below(rng, 4)


_Maker = Callable[[_Session, dict[str, Any], random.Random], None]  # one event type's fields


class ShopGenerator:
    """A seeded shop whose `events` and `records` are the same for the same arguments.

    `events(n)` spreads `n` events over [start_ms, end_ms]: it first counts the
    sessions `n` events need, starts them on a jittered even grid, and
    interleaves them through a heap of open sessions, so events come out in time
    order. Each call starts from the seed again, so `events(n)` is repeatable,
    but `events(100)` is not a prefix of `events(1000)` (session spacing depends on `n`).
    """

    def __init__(
        self, users: int, seed: int, start_ms: int, end_ms: int, products: int = 3000
    ) -> None:
        if users < 1 or products < 1:
            raise ValueError("users and products must be at least 1")
        if not 946_684_800_000 <= start_ms < end_ms:
            raise ValueError("need 2000-01-01 <= start_ms < end_ms (epoch milliseconds)")
        self.users, self.seed, self.start_ms, self.end_ms = users, seed, start_ms, end_ms
        self.catalog = build_catalog(products, seed)
        self._users = _build_users(users, seed)
        self._salt = _mix64(seed & 0xFFFFFFFFFFFFFFFF)
        self._tag = f"{self._salt & 0xFFFFFF:06x}"
        # Mean gap inside a session: ~25 s, shorter when the whole window is small.
        self._gap_ms = max(1.0, min(25_000.0, (end_ms - start_ms) / 400))
        self._shelves = tuple(
            tuple(self.catalog.products[i] for i in shelf)
            for shelf in self.catalog.category_products
        )
        self._popularity = self.catalog.category_cum
        makers: dict[str, _Maker] = {
            "view": self._view,
            "click": self._click,
            "search": self._search,
            "add_to_cart": self._add_to_cart,
            "remove_from_cart": self._remove_from_cart,
            "purchase": self._purchase,
            "review": self._review,
        }
        self._makers = tuple(makers[kind] for kind in _BROWSE_TYPES)  # by index into the mix

    def events(self, n: int) -> Iterator[dict[str, Any]]:
        """`n` valid event dicts in time order, each with a unique `event_id`."""
        rng, plans = random.Random(self._salt), random.Random(self._salt ^ 0x9E3779B9)
        sessions = self._sessions_needed(n)
        tail = min((self.end_ms - self.start_ms) / 10, 16 * self._gap_ms)  # room to finish
        spacing = (self.end_ms - self.start_ms - tail) / sessions
        carts: dict[int, list[tuple[Product, int]]] = {}
        heap: list[tuple[int, int, _Session]] = []
        push, pop, draw, step, log = heapq.heappush, heapq.heappop, rng.random, self._step, math.log
        prefix, gap_ms, end_ms = f"e{self._tag}-", self._gap_ms, self.end_ms
        opened = emitted = 0
        next_start = self.start_ms + draw() * spacing  # a jittered grid: always increasing
        while emitted < n:
            if opened < sessions and (not heap or next_start <= heap[0][0]):
                push(heap, (int(next_start), opened, self._open(rng, _plan(plans), opened, carts)))
                opened += 1
                next_start = self.start_ms + (opened + draw()) * spacing
                continue
            ts, order, session = pop(heap)
            yield step(session, ts, f"{prefix}{emitted:x}", rng)
            emitted += 1
            if session.logins or session.steps > 0:
                gap = 1 + int(-log(1.0 - draw()) * gap_ms)  # exponential think time
                push(heap, (min(ts + gap, end_ms), order, session))

    def _sessions_needed(self, n: int) -> int:
        """Replay the plan stream (cheap, no state) to count the sessions `n` events take."""
        plans, total, sessions = random.Random(self._salt ^ 0x9E3779B9), 0, 0
        while total < n:
            logins, steps, _ = _plan(plans)
            total += len(logins) + steps
            sessions += 1
        return max(1, sessions)

    def records(
        self, n: int, malformed_ratio: float = 0.0, duplicate_ratio: float = 0.0
    ) -> Iterator[tuple[bytes, bytes]]:
        """`n` Kafka records (key = user_id UTF-8, value = JSON bytes), see `labelled_records`."""
        if not malformed_ratio and not duplicate_ratio:  # the benchmark prefill: skip the sampling
            encode = _encode
            for event in self.events(n):
                yield event["user_id"].encode(), encode(event)
            return
        for key, value, _ in self.labelled_records(n, malformed_ratio, duplicate_ratio):
            yield key, value

    def labelled_records(
        self, n: int, malformed_ratio: float = 0.0, duplicate_ratio: float = 0.0
    ) -> Iterator[tuple[bytes, bytes, str]]:
        """`n` records, each labelled `valid`, `duplicate` or its malformed kind.

        Exactly round(n * ratio) records are malformed and round(n * ratio)
        duplicated, at random places (sequential sampling without replacement),
        so a benchmark knows how many DLQ records and dedupe hits to expect. A
        duplicate repeats the key and value bytes of one of the last 2048 valid
        records; a malformed record breaks a fresh event and keeps its key.
        """
        n_bad, n_dup = round(n * malformed_ratio), round(n * duplicate_ratio)
        n_new = n - n_bad - n_dup
        if malformed_ratio < 0 or duplicate_ratio < 0 or n_new < 0 or (n_dup and not n_new):
            raise ValueError("ratios must be >= 0, sum to <= 1, and leave a record to duplicate")
        rng = random.Random(self._salt ^ 0x5EED)
        source, random_ = self.events(n_new + n_bad), rng.random
        recent: list[tuple[bytes, bytes, str]] = []  # a ring of the last valid records
        for left in range(n, 0, -1):
            draw = int(random_() * left) if recent else 0
            if draw < n_new:
                event = next(source)
                record = (event["user_id"].encode(), _encode(event), "valid")
                if len(recent) < _DUPLICATE_WINDOW:
                    recent.append(record)
                else:
                    recent[n_new % _DUPLICATE_WINDOW] = record
                n_new -= 1
                yield record
            elif draw < n_new + n_dup:
                n_dup -= 1
                key, value, _ = recent[_below(rng, len(recent))]
                yield key, value, "duplicate"
            else:
                n_bad -= 1
                event = next(source)
                kind = MALFORMED_KINDS[bisect(_MALFORMED_CUM, rng.random() * _MALFORMED_CUM[-1])]
                yield event["user_id"].encode(), _BREAKERS[kind](event, rng, self.end_ms), kind

    # -- one session -------------------------------------------------------------------------

    def _open(
        self,
        rng: random.Random,
        plan: _Plan,
        number: int,
        carts: dict[int, list[tuple[Product, int]]],
    ) -> _Session:
        """Pick a user by activity; a usual visit comes from one of their devices and cards."""
        u = self._users
        user = bisect(u.activity_cum, rng.random() * u.activity_cum[-1])
        logins, steps, risky = plan
        s = _Session(user, u.ids[user], f"s{self._tag}-{number:x}", logins, steps)
        s.cart = carts.setdefault(user, [])
        s.country, _, s.currency = _COUNTRIES[u.country[user]]
        s.offers = self.catalog.offers[s.currency]
        device = _mix64(self._salt ^ (user << 8) ^ _below(rng, u.devices[user]))
        s.device_id, s.ip = f"d{device:016x}", _ip(device)
        s.card_fp = f"fp{_mix64(device ^ (1 + _below(rng, u.cards[user]))):016x}"
        cum = u.family_cum[user]
        s.family = u.families[user][bisect(cum, rng.random() * cum[-1])]
        s.category = self._category_of(s.family, rng)
        if risky:  # new device, foreign country, new card, quick purchases
            s.country = _COUNTRIES[1 + _below(rng, len(_COUNTRIES) - 1)][0]
            if s.country == _COUNTRIES[u.country[user]][0]:
                s.country = _COUNTRIES[0][0]
            s.device_id, s.card_fp = f"d{rng.getrandbits(64):016x}", f"fp{rng.getrandbits(64):016x}"
            s.ip, s.mix = _ip(rng.getrandbits(32)), _RISKY_CUM
        elif rng.random() < 0.03:  # travelling
            s.country = _COUNTRIES[_below(rng, len(_COUNTRIES))][0]
        return s

    def _category_of(self, family: int, rng: random.Random) -> int:
        cats = self.catalog.family_categories[family]
        return cats[_below(rng, len(cats))]

    def _step(self, s: _Session, ts: int, event_id: str, rng: random.Random) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "event_id": event_id,
            "user_id": s.user_id,
            "type": "",
            "ts": ts,
            "session_id": s.session_id,
            "device_id": s.device_id,
            "country": s.country,
        }
        if s.logins:
            ev["type"] = "login"
            ev["ip"] = s.ip
            ev["success"] = s.logins.pop(0)
            return ev
        s.steps -= 1
        which = bisect(s.mix, rng.random() * s.mix[-1])
        ev["type"] = _BROWSE_TYPES[which]
        self._makers[which](s, ev, rng)
        return ev

    def _product(self, s: _Session, rng: random.Random) -> Product:
        """Mostly the session's current category, sometimes its family, rarely anything."""
        cat, r = s.category, rng.random()
        if r < 0.08:
            cat = _below(rng, len(self.catalog.categories))
        elif r < 0.25:
            cat = self._category_of(s.family, rng)
        cum = self._popularity[cat]
        return self._shelves[cat][bisect(cum, rng.random() * cum[-1])]

    def _seen(self, s: _Session, rng: random.Random) -> Product:
        """One of the last three products viewed (what people click, cart and review)."""
        if not s.views:
            return self._product(s, rng)
        recent = s.views[-3:]
        return recent[_below(rng, len(recent))]

    def _item(self, s: _Session, ev: dict[str, Any], p: Product) -> None:
        ev.update(s.offers[p.index])

    def _view(self, s: _Session, ev: dict[str, Any], rng: random.Random) -> None:
        p = self._product(s, rng)
        s.views.append(p)
        if len(s.views) > 8:
            del s.views[0]
        self._item(s, ev, p)

    def _click(self, s: _Session, ev: dict[str, Any], rng: random.Random) -> None:
        self._item(s, ev, self._seen(s, rng))

    def _search(self, s: _Session, ev: dict[str, Any], rng: random.Random) -> None:
        """A search may move the visit to another favourite family (or, rarely, any family)."""
        if rng.random() < 0.3:
            prefs = self._users.families[s.user]
            s.family = (
                prefs[_below(rng, len(prefs))]
                if rng.random() < 0.8
                else _below(rng, len(_FAMILIES))
            )
        s.category = self._category_of(s.family, rng)
        queries = self.catalog.queries[s.category]
        ev["query"] = queries[_below(rng, len(queries))]

    def _add_to_cart(self, s: _Session, ev: dict[str, Any], rng: random.Random) -> None:
        p = s.views[-1] if s.views else self._product(s, rng)
        qty = _qty(rng)
        if len(s.cart) < 20:
            s.cart.append((p, qty))
        self._item(s, ev, p)
        ev["quantity"] = qty

    def _remove_from_cart(self, s: _Session, ev: dict[str, Any], rng: random.Random) -> None:
        p, qty = s.cart.pop(_below(rng, len(s.cart))) if s.cart else (self._seen(s, rng), 1)
        self._item(s, ev, p)
        ev["quantity"] = qty

    def _purchase(self, s: _Session, ev: dict[str, Any], rng: random.Random) -> None:
        """Checkout of the oldest cart line, or a buy-now of something just seen."""
        p, qty = s.cart.pop(0) if s.cart else (self._seen(s, rng), _qty(rng))
        self._item(s, ev, p)
        r = rng.random()
        method = next(m for m, cut in _PAYMENTS if r < cut)
        ev["quantity"] = qty
        ev["amount"] = round(ev["price"] * qty, 2)
        ev["order_id"] = "o" + ev["event_id"][1:]
        ev["payment_method"] = method
        ev["ip"] = s.ip
        if method in ("card", "apple_pay"):
            ev["card_fp"] = s.card_fp

    def _review(self, s: _Session, ev: dict[str, Any], rng: random.Random) -> None:
        p = self._seen(s, rng)
        ev.update(p.fields)
        rating = 1 + bisect(_RATING_CUM, rng.random())
        ev["rating"] = rating
        ev["text"] = " ".join(rng.sample(_REVIEW_LINES[rating - 1], 2)).format(noun=p.noun.lower())


_encode: Final = msgspec.json.Encoder().encode


# -- malformed records: each breaker turns a fresh valid event into one kind of bad record -----

Breaker = Callable[[dict[str, Any], random.Random, int], bytes]
_OVERSIZE_PAD: Final = "x" * (65 * 1024)  # shared: an oversize record costs one short-lived copy


def _with(event: dict[str, Any], fragment: bytes) -> bytes:
    """The event's JSON with `fragment` (`"key":value`) appended as its last member."""
    return _encode(event)[:-1] + b"," + fragment + b"}"


def _bad_json(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    raw = _encode(event)
    if rng.random() < 0.5:
        return raw[: 1 + _below(rng, len(raw) - 2)]  # truncated: the closing brace is gone
    return raw.replace(b'"event_id"', b"event_id", 1)  # unquoted key, as from a JS literal


def _nan(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    name = "amount" if event["type"] == "purchase" else "price"
    rest = {k: v for k, v in event.items() if k != name}
    return _with(rest, f'"{name}":{rng.choice(["NaN", "Infinity", "-Infinity"])}'.encode())


_WRONG_TYPES: Final[tuple[tuple[str, Any], ...]] = (
    ("ts", "<as text>"), ("user_id", 12345), ("quantity", "2"), ("rating", "five"),
    ("success", "yes"), ("item_id", ["p1"]), ("price", "19.99"), ("event_id", {"id": 1}),
)  # fmt: skip
_OUT_OF_RANGE: Final[tuple[tuple[str, Any], ...]] = (
    ("rating", 9), ("rating", 0), ("quantity", 0), ("quantity", 100_000), ("price", -5.0),
    ("amount", 2.5e7), ("event_id", "e" * 65), ("title", "t" * 600),
)  # fmt: skip
_INVALID_VALUES: Final = (("currency", "usd"), ("currency", "EURO"), ("country", "USA"),
                          ("country", "uk"))  # fmt: skip


def _wrong_type(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    name, value = rng.choice(_WRONG_TYPES)
    return _encode({**event, name: str(event["ts"]) if name == "ts" else value})


def _missing_field(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    needs = {"search": "query", "purchase": "amount", "login": "event_id"}
    name = rng.choice(["event_id", "user_id", "type", "ts", needs.get(event["type"], "item_id")])
    return _encode({k: v for k, v in event.items() if k != name})


def _empty_field(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    return _encode({**event, rng.choice(["event_id", "user_id"]): ""})


def _unknown_type(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    return _encode({**event, "type": rng.choice(["wishlist", "share", "pageview", "VIEW", ""])})


def _ancient_ts(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    return _encode({**event, "ts": 631_152_000_000 + _below(rng, 31_536_000_000)})  # in 1990


def _future_ts(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    return _encode({**event, "ts": end_ms + (2 + _below(rng, 400)) * 86_400_000})


def _out_of_range(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    name, value = rng.choice(_OUT_OF_RANGE)
    return _encode({**event, name: value})


def _invalid_value(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    name, value = rng.choice(_INVALID_VALUES)
    return _encode({**event, name: value})


def _oversize(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    return _encode({**event, "text": _OVERSIZE_PAD})


def _not_utf8(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    return _with(event, rng.choice([b'"note":"caf\xe9"', b'"title":"\xff\xfe bad"']))


def _deep_nesting(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    depth = 1_200 + _below(rng, 2_800)
    if rng.random() < 0.5:
        return _with(event, b'"junk":' + b"[" * depth + b"]" * depth)
    return _with(event, b'"junk":' + b'{"a":' * depth + b"1" + b"}" * depth)


def _top_level_array(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    return b"[" + _encode(event) + b"]"


def _scalar(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    return rng.choice([b"null", b"42", b'"view"', b"true", b""])


def _too_many_fields(event: dict[str, Any], rng: random.Random, end_ms: int) -> bytes:
    return _encode({**event, **{f"extra_{i}": i for i in range(70)}})


_BREAKERS: Final[dict[str, Breaker]] = {
    "bad_json": _bad_json, "nan": _nan, "wrong_type": _wrong_type,
    "missing_field": _missing_field, "empty_field": _empty_field, "unknown_type": _unknown_type,
    "ancient_ts": _ancient_ts, "future_ts": _future_ts, "out_of_range": _out_of_range,
    "invalid_value": _invalid_value, "oversize": _oversize, "not_utf8": _not_utf8,
    "deep_nesting": _deep_nesting, "top_level_array": _top_level_array, "scalar": _scalar,
    "too_many_fields": _too_many_fields,
}  # fmt: skip
MALFORMED_KINDS: Final = tuple(_BREAKERS)
"""Every kind of malformed record `records` can emit; each must be dead-lettered."""

# Oversize records are rare (1 in ~300 malformed ones): they are big and they are all alike.
_MALFORMED_CUM: Final = tuple(accumulate(0.05 if k == "oversize" else 1.0 for k in MALFORMED_KINDS))
