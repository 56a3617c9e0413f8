"""Deterministic fraud scenarios: normal shop traffic with labelled fraud mixed in.

The fraud benchmark scores every `purchase` and `login` the worker sees, later
publishes delayed labels for some of them, and measures ROC AUC and alert
precision/recall. That needs ground truth, which `stream.synthetic_shop` does
not keep, so this module builds the whole stream per user, scenario by
scenario, and records which scored events are fraud.

Most users are normal: a multi-day history of logins, browsing, carts and
purchases near their own typical basket, from their own 1-2 devices and cards
in their home country. A share of users are victims or fraudsters (account
takeover, card testing, high-value first orders). Some legitimate users look
suspicious on purpose (travellers, big planned purchases, new accounts,
forgotten passwords) so that no single feature separates the classes and the
benchmark measures a model rather than a rule.

Every scored event of a fraud scenario is fraud (label 1) and every other scored
event is legitimate (label 0); `Scenario.kind` says which scenario produced it.
Everything comes from one `random.Random(seed)` and `start_ms`: no wall clock,
no I/O, so the same arguments give the same events on every machine.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any, Final

HOUR_MS: Final = 3_600_000
FRAUD_KINDS: Final = ("account_takeover", "card_testing", "new_account_high_value")
HARD_LEGIT_SHARES: Final = {
    "traveller": 0.04,
    "big_purchase": 0.04,
    "new_account": 0.05,
    "forgot_password": 0.04,
}
"""Share of the legitimate users in each hard case; the rest are plain `normal` users."""
LEGIT_KINDS: Final = ("normal", *HARD_LEGIT_SHARES)
LABEL_JITTER: Final = 0.1
"""A label arrives `delay_ms` after its event plus up to this fraction of `delay_ms` more."""

# (category, brands, nouns, lowest and highest price in USD): prices span $0.50 to $3500 so
# that tiny card tests, everyday baskets and high-value orders all find real products.
_CATEGORIES: Final = (
    ("digital.gift_card", "ShopCard|PlayPass", "eGift Card|App Credit|Top-Up", 0.5, 50.0),
    ("books.fiction", "Penguin|Vintage|Scribner", "Novel|Short Stories|Thriller", 5.0, 30.0),
    ("fashion.clothing", "Uniqlo|Levi's|Patagonia", "Hoodie|T-Shirt|Rain Jacket", 10.0, 150.0),
    ("fashion.shoes", "Nike|Adidas|ASICS", "Running Shoes|Sneakers|Hiking Boots", 40.0, 220.0),
    ("home.kitchen", "KitchenAid|Ninja|Breville", "Blender|Air Fryer|Stand Mixer", 15.0, 500.0),
    ("beauty.skincare", "CeraVe|Neutrogena|Olaplex", "Moisturizer|Serum|Sunscreen", 6.0, 80.0),
    ("toys.games", "LEGO|Hasbro|Mattel", "Building Set|Board Game|Jigsaw Puzzle", 8.0, 200.0),
    ("electronics.accessory", "Anker|Belkin|Logitech", "Phone Case|Charger|Mouse", 5.0, 90.0),
    ("electronics.headphones", "Sony|Bose|JBL", "Headphones|Earbuds|Gaming Headset", 25.0, 450.0),
    ("electronics.smartphone", "Apple|Samsung|Google", "Smartphone|Foldable Phone", 200.0, 1800.0),
    ("electronics.laptop", "Lenovo|Dell|ASUS", "Laptop|Ultrabook|Gaming Laptop", 450.0, 3500.0),
    ("electronics.camera", "Canon|Nikon|Fujifilm", "Mirrorless Camera|Lens", 300.0, 3200.0),
)
_MODELS: Final = ("Pro", "Lite", "Max", "Mini", "Plus", "Classic", "Air", "Neo", "X", "II")
_ITEMS_PER_CATEGORY: Final = 40
_HOMES: Final = ("US", "US", "US", "US", "GB", "GB", "DE", "DE", "FR", "CA", "ES", "IT", "NL",
                 "AU", "JP", "PL", "SE", "IE")  # fmt: skip
# Travellers and attackers come from the same places, so a new country alone proves nothing.
_ABROAD: Final = (*sorted(set(_HOMES)), "BR", "MX", "IN", "NG", "VN", "RO", "UA", "TR", "TH")
_PAYMENTS: Final = ("card", "card", "card", "apple_pay", "paypal")
_REVIEWS: Final = ("Works as described.", "Great value.", "Arrived late but fine.",
                   "Not what I expected.", "Would buy again.")  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    """The event stream and its ground truth."""

    events: list[dict[str, object]]
    """Behaviour events (DESIGN.md §3), sorted by `ts` (creation order breaks ties)."""
    fraud: frozenset[str]
    """event_ids of the fraudulent purchase and login events (label 1)."""
    scored: frozenset[str]
    """event_ids of every purchase and login event: what the risk model scores."""
    kind: dict[str, str]
    """event_id -> scenario name (`FRAUD_KINDS` or `LEGIT_KINDS`) for each scored event."""

    def labels(
        self, *, fraction: float, negatives: float, delay_ms: int, seed: int
    ) -> list[dict[str, object]]:
        """Label records `{event_id, user_id, label, ts}` for part of the scored events, by ts.

        `fraction` of the fraud events get label 1 and `negatives` of the legitimate
        scored events label 0, like a shop that learns of chargebacks and confirms
        some good orders late: each label's ts is its event's ts + `delay_ms` + a
        jitter of up to `LABEL_JITTER * delay_ms`. Deterministic in `seed`.
        """
        if not (0 <= fraction <= 1 and 0 <= negatives <= 1) or delay_ms < 0:
            raise ValueError("fraction and negatives must be in [0, 1], delay_ms >= 0")
        rng = random.Random(seed)
        positives, legit = sorted(self.fraud), sorted(self.scored - self.fraud)
        chosen = [(e, 1) for e in rng.sample(positives, round(fraction * len(positives)))]
        chosen += [(e, 0) for e in rng.sample(legit, round(negatives * len(legit)))]
        events: list[dict[str, Any]] = self.events
        by_id = {e["event_id"]: e for e in events}
        rows: list[tuple[int, str, str, int]] = []
        for event_id, label in chosen:
            jitter = rng.randint(0, int(delay_ms * LABEL_JITTER))
            event = by_id[event_id]
            rows.append((event["ts"] + delay_ms + jitter, event_id, event["user_id"], label))
        rows.sort()
        return [{"event_id": e, "user_id": u, "label": y, "ts": t} for t, e, u, y in rows]


@dataclass(frozen=True, slots=True)
class _Item:
    price: float
    fields: dict[str, object]  # item_id, title, category, brand, price: what item events carry


@dataclass(slots=True)
class _User:
    user_id: str
    home: str
    devices: list[str]
    cards: list[str]
    payment: str
    typical: float  # the centre of this user's basket, in USD
    favourites: list[int]  # category indexes
    last_device: str = ""  # the device and card of the latest legitimate events,
    last_card: str = ""  # what a "known device/card" case reuses


@dataclass(slots=True)
class _Visit:
    """One session: who, from where, with what, and the clock as it advances."""

    user: _User
    session_id: str
    device: str
    country: str
    ip: str
    card: str
    ts: int
    kind: str = "normal"
    fraud: bool = False


def _hex(rng: random.Random, prefix: str, bits: int = 64) -> str:
    return f"{prefix}{rng.getrandbits(bits):0{bits // 4}x}"


def _ip_of(device: str) -> str:
    """A stable address per device at home (a new one abroad): enough for an `ip` feature."""
    h = int(device[1:], 16)
    return ".".join(str(1 + (h >> shift) % 254) for shift in (0, 8, 16, 24))


def _catalog(rng: random.Random) -> list[_Item]:
    """Products with log-uniform prices per category, sorted by price for `_Shop.pick`."""
    items = []
    for c, (category, brands, nouns, low, high) in enumerate(_CATEGORIES):
        for k in range(_ITEMS_PER_CATEGORY):
            brand, noun = rng.choice(brands.split("|")), rng.choice(nouns.split("|"))
            price = round(math.exp(rng.uniform(math.log(low), math.log(high))), 2)
            title = f"{brand} {noun} {rng.choice(_MODELS)}"
            fields = {"item_id": f"p{c:02d}{k:03d}", "title": title, "category": category}
            items.append(_Item(price, {**fields, "brand": brand, "price": price}))
    return sorted(items, key=lambda item: item.price)


@dataclass
class _Shop:
    """Builds events and the ground truth as scenarios play out."""

    rng: random.Random
    tag: str
    start_ms: int
    end_ms: int
    items: list[_Item] = field(init=False)
    prices: list[float] = field(init=False)
    by_category: list[list[_Item]] = field(init=False)
    events: list[dict[str, Any]] = field(default_factory=list)
    fraud: set[str] = field(default_factory=set)
    kind: dict[str, str] = field(default_factory=dict)
    count: int = 0

    def __post_init__(self) -> None:
        self.items = _catalog(self.rng)
        self.prices = [item.price for item in self.items]
        self.by_category = [
            [i for i in self.items if i.fields["category"] == c[0]] for c in _CATEGORIES
        ]

    def at(self, low: float, high: float) -> int:
        """A random time between these fractions of the window."""
        span = self.end_ms - self.start_ms
        return self.start_ms + int(span * self.rng.uniform(low, high))

    def new_user(self, number: int) -> _User:
        rng = self.rng
        devices = [_hex(rng, "d", 48) for _ in range(1 if rng.random() < 0.6 else 2)]
        cards = [_hex(rng, "fp") for _ in range(1 if rng.random() < 0.7 else 2)]
        typical = math.exp(rng.uniform(math.log(20), math.log(200)))
        favourites = rng.sample(range(1, len(_CATEGORIES)), 3)
        home, payment = rng.choice(_HOMES), rng.choice(_PAYMENTS)
        return _User(
            f"u-{self.tag}-{number:06d}", home, devices, cards, payment, typical, favourites
        )

    def visit(self, user: _User, ts: int, kind: str = "normal", fraud: bool = False) -> _Visit:
        """A session at home from one of the user's own devices and cards."""
        self.count += 1
        device, card = self.rng.choice(user.devices), self.rng.choice(user.cards)
        session_id = f"s-{self.tag}-{self.count:x}"
        return _Visit(user, session_id, device, user.home, _ip_of(device), card, ts, kind, fraud)

    def move(self, v: _Visit, country: str, *, new_device: bool = False) -> None:
        """Take a visit to another network (in `country`), maybe on a device never seen before."""
        if new_device:
            v.device = _hex(self.rng, "d", 48)
        v.country, v.ip = country, _ip_of(_hex(self.rng, "d", 48))

    def familiar(self, v: _Visit) -> None:
        """Use the device and card this user used last (both seen by their profile)."""
        v.device, v.card = v.user.last_device or v.device, v.user.last_card or v.card
        v.ip = _ip_of(v.device)

    def wait(self, v: _Visit, low_s: float, high_s: float) -> None:
        v.ts += int(self.rng.uniform(low_s, high_s) * 1000)

    def emit(self, v: _Visit, type_: str, fields: dict[str, object]) -> str:
        self.count += 1
        event_id = f"e-{self.tag}-{self.count:07x}"
        event: dict[str, object] = {"event_id": event_id, "user_id": v.user.user_id,
                                    "type": type_, "ts": min(v.ts, self.end_ms),
                                    "session_id": v.session_id, "device_id": v.device,
                                    "country": v.country}  # fmt: skip
        event.update(fields)
        self.events.append(event)
        if not v.fraud:
            v.user.last_device = v.device
            if type_ == "purchase":
                v.user.last_card = v.card
        if type_ in ("login", "purchase"):
            self.kind[event_id] = v.kind
            if v.fraud:
                self.fraud.add(event_id)
        return event_id

    def pick(self, low: float, high: float) -> _Item:
        """A product priced in [low, high], or the one nearest their geometric mean."""
        i, j = bisect_left(self.prices, low), bisect_right(self.prices, high)
        if i < j:
            return self.items[self.rng.randrange(i, j)]
        target = math.log(math.sqrt(low * high))
        return min(self.items, key=lambda item: abs(math.log(item.price) - target))

    def login(self, v: _Visit, success: bool = True) -> None:
        self.emit(v, "login", {"success": success, "ip": v.ip})
        self.wait(v, 3, 30)

    def purchase(self, v: _Visit, item: _Item, quantity: int = 1) -> None:
        fields = dict(item.fields)
        fields["quantity"], fields["amount"] = quantity, round(item.price * quantity, 2)
        fields["currency"], fields["order_id"] = "USD", f"o-{self.tag}-{self.count + 1:07x}"
        fields["payment_method"] = "card" if v.fraud else v.user.payment  # stolen cards
        fields["card_fp"], fields["ip"] = v.card, v.ip
        self.emit(v, "purchase", fields)

    def cart_and_buy(self, v: _Visit, item: _Item, quantity: int = 1) -> None:
        """Add to cart, look around for a few minutes, check out."""
        self.emit(v, "add_to_cart", {**item.fields, "quantity": quantity})
        self.wait(v, 60, 900)
        self.purchase(v, item, quantity)

    def browse(self, v: _Visit, steps: int) -> None:
        """Views, clicks and searches in the user's favourite categories, a cart now and then."""
        rng, last = self.rng, None
        for _ in range(steps):
            self.wait(v, 8, 120)
            r, category = rng.random(), rng.choice(v.user.favourites)
            if r < 0.15:
                brands, nouns = _CATEGORIES[category][1:3]
                noun = rng.choice(nouns.split("|")).lower()
                brand = rng.choice(brands.split("|"))
                query = rng.choice((noun, f"{brand} {noun}", f"best {noun}"))
                self.emit(v, "search", {"query": query})
            elif r < 0.65 or last is None:
                last = rng.choice(self.by_category[category])
                self.emit(v, "view", last.fields)
            elif r < 0.87:
                self.emit(v, "click", last.fields)
            elif r < 0.95:
                self.emit(v, "add_to_cart", {**last.fields, "quantity": 1})
            elif r < 0.97:
                self.emit(v, "remove_from_cart", {**last.fields, "quantity": 1})
            else:
                text = rng.choice(_REVIEWS)
                self.emit(v, "review", {**last.fields, "rating": rng.randint(1, 5), "text": text})

    def basket(self, user: _User) -> tuple[_Item, int]:
        """An item and quantity near the user's typical basket (lognormal around it)."""
        if self.rng.random() < 0.05:  # a small add-on: legit purchases can be tiny too
            return self.pick(1.0, 10.0), 1
        quantity = 1 if self.rng.random() < 0.8 else self.rng.randint(2, 3)
        target = user.typical * self.rng.lognormvariate(0, 0.35) / quantity
        return self.pick(target / 1.2, target * 1.2), quantity


def _session(shop: _Shop, v: _Visit, buy: float = 0.35) -> None:
    """A usual visit: maybe a login (rarely one typo first), browsing, maybe a purchase."""
    rng = shop.rng
    if rng.random() < 0.75:
        if rng.random() < 0.04:
            shop.login(v, success=False)
        shop.login(v)
    shop.browse(v, rng.randint(2, 12))
    if rng.random() < buy:
        shop.cart_and_buy(v, *shop.basket(v.user))


def _history(shop: _Shop, user: _User, low: float, high: float) -> None:
    """Sessions between these window fractions, more for longer windows; the first one buys."""
    hours = (shop.end_ms - shop.start_ms) / HOUR_MS
    sessions = max(2, round(hours / 24 * shop.rng.uniform(0.6, 2.4)))
    for n, ts in enumerate(sorted(shop.at(low, high) for _ in range(sessions))):
        v = shop.visit(user, ts)
        if shop.rng.random() < 0.02:  # a new phone: an unknown device need not be fraud
            v.device = _hex(shop.rng, "d", 48)
            user.devices.append(v.device)
        _session(shop, v, buy=1.0 if n == 0 else 0.35)


def _normal(shop: _Shop, user: _User) -> None:
    _history(shop, user, 0.0, 0.97)


def _account_takeover(shop: _Shop, user: _User) -> None:
    """Failed logins then a success from a new device and country, big buys on a new card."""
    rng = shop.rng
    _history(shop, user, 0.0, 0.6)
    country = rng.choice([c for c in _ABROAD if c != user.home])
    v = shop.visit(user, shop.at(0.65, 0.95), "account_takeover", fraud=True)
    shop.move(v, country, new_device=True)
    v.card = _hex(rng, "fp")
    for _ in range(rng.randint(3, 8)):
        shop.login(v, success=False)
    shop.login(v)
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.3:
            shop.browse(v, 1)
        shop.wait(v, 20, 240)
        target = user.typical * rng.uniform(5, 20)
        shop.purchase(v, shop.pick(target / 1.15, target * 1.15))


def _card_testing(shop: _Shop, user: _User) -> None:
    """Tiny purchases, each on another card, within two minutes; on a fresh or thin account."""
    rng = shop.rng
    if rng.random() < 0.5:  # thin: a visit or two without a purchase, earlier on
        for _ in range(rng.randint(1, 2)):
            _session(shop, shop.visit(user, shop.at(0.0, 0.3)), buy=0.0)
    country = user.home if rng.random() < 0.5 else rng.choice(_ABROAD)
    v = shop.visit(user, shop.at(0.35, 0.97), "card_testing", fraud=True)
    shop.move(v, country, new_device=True)
    shop.login(v)
    tries = rng.randint(5, 20)
    for _ in range(tries):
        v.card = _hex(rng, "fp")
        shop.purchase(v, shop.pick(0.5, 5.0))
        shop.wait(v, 1, 100 / tries)


def _new_account_high_value(shop: _Shop, user: _User) -> None:
    """An account whose first event is minutes before a $800-3000 order on a new card."""
    rng = shop.rng
    v = shop.visit(user, shop.at(0.05, 0.97), "new_account_high_value", fraud=True)
    if rng.random() < 0.4:  # behind a proxy or abroad; the rest mimic a local customer
        shop.move(v, rng.choice(_ABROAD))
    shop.login(v)
    shop.wait(v, 30, 240)
    item = shop.pick(800.0, 3000.0)
    for _ in range(rng.randint(0, 2)):
        shop.emit(v, "view", item.fields)
        shop.wait(v, 10, 90)
    if rng.random() < 0.5:
        shop.emit(v, "add_to_cart", {**item.fields, "quantity": 1})
        shop.wait(v, 2, 20)
    shop.purchase(v, item)


def _traveller(shop: _Shop, user: _User) -> None:
    """A normal user who logs in and buys abroad once, on a known device and card."""
    _history(shop, user, 0.0, 0.6)
    v = shop.visit(user, shop.at(0.65, 0.95), "traveller")
    shop.familiar(v)
    shop.move(v, shop.rng.choice([c for c in _ABROAD if c != user.home]))
    shop.login(v)
    shop.browse(v, shop.rng.randint(1, 6))
    shop.cart_and_buy(v, *shop.basket(user))


def _big_purchase(shop: _Shop, user: _User) -> None:
    """A 2-5x purchase, carted days before, on a known device and card."""
    _history(shop, user, 0.0, 0.6)
    target = user.typical * shop.rng.uniform(2, 5)
    item = shop.pick(target / 1.15, target * 1.15)
    v = shop.visit(user, shop.at(0.05, 0.35))
    shop.browse(v, shop.rng.randint(1, 4))
    shop.emit(v, "add_to_cart", {**item.fields, "quantity": 1})
    v = shop.visit(user, shop.at(0.65, 0.95), "big_purchase")
    shop.familiar(v)
    shop.login(v)
    shop.emit(v, "view", item.fields)
    shop.wait(v, 20, 300)
    shop.purchase(v, item)


def _new_account(shop: _Shop, user: _User) -> None:
    """A real newcomer: signs up, browses, buys something small on a card never seen before."""
    v = shop.visit(user, shop.at(0.05, 0.9), "new_account")
    shop.login(v)
    shop.browse(v, shop.rng.randint(3, 12))
    shop.cart_and_buy(v, shop.pick(10.0, 60.0))
    if shop.rng.random() < 0.5:
        _session(shop, shop.visit(user, shop.at(0.92, 0.97)))


def _forgot_password(shop: _Shop, user: _User) -> None:
    """Two failed logins then a success, at home on a known device; maybe a purchase."""
    _history(shop, user, 0.0, 0.6)
    v = shop.visit(user, shop.at(0.65, 0.95), "forgot_password")
    shop.familiar(v)
    shop.login(v, success=False)
    shop.login(v, success=False)
    shop.wait(v, 30, 180)  # the password reset
    shop.login(v)
    shop.browse(v, shop.rng.randint(1, 8))
    if shop.rng.random() < 0.5:
        shop.cart_and_buy(v, *shop.basket(user))


_PLAYS: Final = {
    "normal": _normal,
    "account_takeover": _account_takeover,
    "card_testing": _card_testing,
    "new_account_high_value": _new_account_high_value,
    "traveller": _traveller,
    "big_purchase": _big_purchase,
    "new_account": _new_account,
    "forgot_password": _forgot_password,
}


def _roles(rng: random.Random, users: int, fraud_share: float) -> list[str]:
    """One scenario per user: fraud split evenly over the three kinds, hard cases, normal."""
    n_fraud = round(users * fraud_share)
    roles = [FRAUD_KINDS[i % len(FRAUD_KINDS)] for i in range(n_fraud)]
    for name, share in HARD_LEGIT_SHARES.items():
        roles += [name] * round((users - n_fraud) * share)
    roles += ["normal"] * (users - len(roles))
    rng.shuffle(roles)
    return roles


def generate(
    *,
    users: int = 2000,
    fraud_share: float = 0.03,
    hours: float = 72.0,
    start_ms: int = 1_767_225_600_000,
    seed: int = 7,
) -> Scenario:
    """Normal traffic of `users` accounts over `hours` from `start_ms`, with fraud mixed in.

    `fraud_share` of the users are fraud (victims of account takeover, or
    accounts used for card testing or a high-value first order), split evenly
    across the three kinds; 17% of the rest are hard legitimate cases.
    """
    if users < 1 or not 0 <= fraud_share <= 1 or hours <= 0:
        raise ValueError("need users >= 1, 0 <= fraud_share <= 1 and hours > 0")
    rng = random.Random(seed)
    shop = _Shop(rng, f"{seed & 0xFFFFFFFF:08x}", start_ms, start_ms + int(hours * HOUR_MS))
    for number, role in enumerate(_roles(rng, users, fraud_share)):
        _PLAYS[role](shop, shop.new_user(number))
    events = sorted(shop.events, key=lambda event: event["ts"])  # stable: ties keep their order
    return Scenario(events, frozenset(shop.fraud), frozenset(shop.kind), shop.kind)
