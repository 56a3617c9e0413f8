"""Worker configuration: one frozen settings object, read from `PROFILER_*` variables.

Every field documents itself; `profiler config` prints the table. The pure engine
never sees this object: the edge turns it into plain arguments.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from profiling.currency import CODE_PATTERN, Currencies
from profiling.snapshots import MIN_SECRET_BYTES

# Kafka's rule for topic names: 1 to 249 of these characters.
TOPIC_NAME = r"^[A-Za-z0-9._-]{1,249}$"
# The longest duration a setting takes: 100 years. Redis refuses an expiry whose
# milliseconds, added to the current time, overflow 64 bits; this stays far below.
MAX_DAYS = 36_500
MAX_SECONDS = MAX_DAYS * 86_400
# Kafka's protocol carries timeouts and waits as 32-bit integers (ms).
INT32_MAX = 2**31 - 1
# Per-user tables kept in the profile state (`profile-state:{u}`), which every batch
# the user is in reads, parses and writes back whole: 8 times the defaults is more than
# a shop needs, and a default typed with an extra zero is refused rather than grow
# every busy user's state. A slot is some 40 bytes of JSON, a window entry 8 bytes.
MAX_CATEGORY_SLOTS = 512
MAX_DEDUPE_WINDOW = 16_384
# The topic settings, in the order they are validated, and those a worker reads.
TOPICS = (
    "topic_events",
    "topic_dlq",
    "topic_updates",
    "topic_alerts",
    "topic_labels",
    "topic_commands",
)
INPUT_TOPICS = frozenset({"topic_events", "topic_labels", "topic_commands"})


class Settings(BaseSettings):
    """Everything a worker reads from its environment (prefix `PROFILER_`)."""

    # allow_inf_nan: no float setting means anything infinite or NaN (inf days, nan seconds)
    model_config = SettingsConfigDict(
        env_prefix="PROFILER_", frozen=True, extra="ignore", allow_inf_nan=False
    )

    # Connections
    kafka_bootstrap: str = Field(
        "localhost:9092", description="Kafka bootstrap servers, comma-separated"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(
        None, validate_default=True, description="SASL password"
    )
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle for SSL/SASL_SSL")
    redis_url: str = Field(
        "redis://localhost:6379/0", description="Redis URL; rediss:// for TLS, user:pass@ for ACL"
    )
    redis_cluster: bool = Field(
        False, description="Redis is a Redis Cluster: the cluster client, one user per store call"
    )
    group_id: str = Field(
        "profiler", min_length=1, description="Kafka consumer group of the workers"
    )
    kafka_session_timeout_ms: int = Field(
        10_000,
        ge=1000,
        le=INT32_MAX,
        description="consumer group session timeout; a silent worker is dropped",
    )
    kafka_heartbeat_interval_ms: int = Field(
        3000,
        ge=100,
        le=INT32_MAX,
        description="consumer group heartbeat interval (below a third of the session)",
    )

    # Topics
    topic_events: str = Field(
        "behavior-events", pattern=TOPIC_NAME, description="behaviour events in (key = user_id)"
    )
    topic_dlq: str = Field(
        "behavior-events.dlq", pattern=TOPIC_NAME, description="rejected records out, with a reason"
    )
    topic_updates: str = Field(
        "profile-updates", pattern=TOPIC_NAME, description="significant profile changes out"
    )
    topic_alerts: str = Field("fraud-alerts", pattern=TOPIC_NAME, description="fraud alerts out")
    topic_labels: str = Field(
        "fraud-labels", pattern=TOPIC_NAME, description="delayed fraud labels in"
    )
    topic_commands: str = Field(
        "profile-commands", pattern=TOPIC_NAME, description="erase / merge commands in"
    )

    # Batching
    batch_max_events: int = Field(5000, ge=1, description="most events taken in one batch")
    batch_max_ms: int = Field(
        50, ge=1, le=INT32_MAX, description="longest wait, in ms, to fill a batch"
    )
    producer_linger_ms: int = Field(
        5,
        ge=0,
        le=INT32_MAX,
        description="producer linger, in ms, of a message sent alone (a batch's "
        "messages go out whole, without it)",
    )
    producer_compression: Literal["gzip", "snappy", "lz4", "zstd"] | None = Field(
        None, description="compression of produced batches: gzip, snappy, lz4, zstd or empty"
    )
    producer_idempotence: bool = Field(
        False, description="idempotent producer (needs broker support; Tansu memory lacks it)"
    )

    # Profile semantics
    category_half_life_days: float = Field(
        14.0, gt=0, le=MAX_DAYS, description="half-life of category affinity, in event-time days"
    )
    category_slots: int = Field(
        64,
        ge=10,
        le=MAX_CATEGORY_SLOTS,
        description=(
            "categories tracked per user, the table the published top 10 is drawn from; at "
            "most 512 (8 times the default): some 40 bytes each in the user's state, which "
            "every batch the user is in reads and rewrites whole"
        ),
    )
    dedupe_window: int = Field(
        2048,
        ge=16,
        le=MAX_DEDUPE_WINDOW,
        description=(
            "recent event_ids remembered per user for de-duplication; at most 16384 (8 times "
            "the default): 8 bytes each in the user's state, 128 KB at most, which every "
            "batch the user is in reads and rewrites whole; a re-send comes within seconds, "
            "not 16,384 of its user's events later"
        ),
    )
    heartbeat_s: float = Field(
        60.0,
        ge=0,
        le=MAX_SECONDS,
        description=(
            "publish a counters-only change at most this often per user, and once it has passed"
        ),
    )
    held_back_ttl_s: int = Field(
        7 * 86_400,
        ge=0,
        le=MAX_SECONDS,
        description=(
            "a partition's held-back ledger in Redis expires this long after its last save"
            " (at least the heartbeat; 0 keeps it)"
        ),
    )
    profile_ttl_s: int = Field(
        0,
        ge=0,
        le=MAX_SECONDS,
        description="expire profiles inactive this long (seconds); 0 keeps them",
    )
    currency: str = Field(
        "USD",
        pattern=CODE_PATTERN,
        description="currency spend, order amounts and prices are counted in (ISO 4217)",
    )
    currency_rates: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description="JSON: units of each other currency per unit of PROFILER_CURRENCY, e.g. "
        '{"EUR": 0.92, "JPY": 150}, each from 1e-9 to 1e9; a currency without a rate counts '
        "no money; empty: every amount counts as sent",
    )
    profile_cache_users: int = Field(
        20_000,
        ge=0,
        description="profiles a worker keeps in memory after writing them (3-7.5 KB each); 0: none",
    )

    # Interest vectors
    encoder_model: str = Field(
        "auto",
        description="text encoder: auto (MiniLM if installed, else none), minilm, hashing, "
        "none, or a local Hugging Face model folder",
    )
    device: str | None = Field(
        None,
        pattern=r"^(cpu|cuda(:[0-9]+)?|mps)$",
        description="encoder device (cpu, cuda, cuda:1); unset or auto: CUDA when there is one",
    )
    encoder_max_tokens: int = Field(
        128, ge=2, description="texts are cut to this many tokens (at most the model's limit)"
    )
    vector_long_half_life_days: float = Field(
        30.0, gt=0, le=MAX_DAYS, description="half-life of vec_long"
    )
    vector_short_half_life_hours: float = Field(
        1.0, gt=0, le=MAX_DAYS * 24, description="half-life of vec_short"
    )
    vector_drift_threshold: float = Field(
        0.05, ge=0, le=2, description="publish when vec_long turned this far (1 - cosine)"
    )
    vector_in_updates: bool = Field(False, description="add vec_long (base64) to change messages")
    embedding_cache_size: int = Field(50_000, ge=1, description="in-process embedding LRU entries")
    embedding_cache_ttl_s: int = Field(
        7 * 86_400,
        ge=0,
        le=MAX_SECONDS,
        description="TTL of embeddings shared in Redis (0: not shared)",
    )

    # Segments and fraud risk (River)
    models: bool = Field(True, description="run the online segment and fraud-risk models")
    risk_alert_threshold: float = Field(
        0.8, gt=0, lt=1, description="publish a fraud alert when an event's risk reaches this"
    )
    segments: int = Field(8, ge=2, le=64, description="number of online k-means segments")
    segment_switch_margin: float = Field(
        0.8, gt=0, le=1, description="move a user only to a centre nearer than this x the current"
    )
    segment_min_dwell: int = Field(
        3, ge=0, description="updates a user stays in a segment before it may move"
    )
    model_secret: SecretStr | None = Field(
        None,
        description="HMAC key (16+ bytes) signing model snapshots in Redis; unset: no snapshots",
    )
    fingerprint_key: SecretStr | None = Field(
        None,
        description="key (16+ bytes) of the device, country and card fingerprints in profiles; "
        "unset: unkeyed digests; the same in every worker of a group",
    )
    model_checkpoint_s: float = Field(
        60.0,
        gt=0,
        le=MAX_SECONDS,
        description="snapshot the models to Redis this often (and at shutdown)",
    )
    scored_ttl_days: float = Field(
        30.0,
        gt=0,
        le=MAX_DAYS,
        description="keep each scored event's features this long, awaiting its label",
    )
    erased_marker_days: float = Field(
        0.0,
        ge=0,
        le=MAX_DAYS,
        description="keep an erased user's marker (it suppresses their events older than the "
        "erase) this long; 0 keeps it",
    )

    # Web / metrics
    web_port: int = Field(
        6066, ge=0, le=65535, description="worker web port (/health, /ready, /metrics); 0: none"
    )
    ready_max_lag: int = Field(
        100_000, ge=0, description="/ready fails while the consumer lag exceeds this many records"
    )

    def currencies(self) -> Currencies:
        """What spend, amounts and prices count in (`PROFILER_CURRENCY` and its `_RATES`)."""
        return Currencies(self.currency, dict(self.currency_rates))

    def topic_names(self) -> tuple[str, ...]:
        """The six topics a worker reads or writes."""
        return (
            self.topic_events,
            self.topic_dlq,
            self.topic_updates,
            self.topic_alerts,
            self.topic_labels,
            self.topic_commands,
        )

    @field_validator(
        "producer_compression", "device", "kafka_sasl_username", "kafka_ssl_cafile", mode="before"
    )
    @classmethod
    def _empty_is_none(cls, value: object, info: ValidationInfo) -> object:
        """An empty variable is an unset one (no compression, the device chosen for you, ...);
        so is `auto` for the device."""
        return None if value == "" or (info.field_name == "device" and value == "auto") else value

    @field_validator("encoder_model", mode="before")
    @classmethod
    def _empty_is_auto(cls, value: object) -> object:
        """An empty variable is an unset one: the default choice, not a folder named ""."""
        return "auto" if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_sasl_password")
    @classmethod
    def _sasl_needs_credentials(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        """SASL is refused at start without a user and password, not at the broker (an
        empty password is none, as an empty user name is)."""
        protocol = info.data.get("kafka_security_protocol", "")
        if protocol.startswith("SASL") and (
            value is None
            or not value.get_secret_value()
            or not info.data.get("kafka_sasl_username")
        ):
            raise ValueError(
                f"SASL ({protocol}) needs PROFILER_KAFKA_SASL_USERNAME and this password"
            )
        return value

    @field_validator(*TOPICS)
    @classmethod
    def _not_a_path(cls, value: str) -> str:
        """Kafka refuses "." and "..", which `TOPIC_NAME` lets through (its engine has no
        look-ahead to say so)."""
        if value in (".", ".."):
            raise ValueError(f"{value!r} is no topic name Kafka accepts")
        return value

    @field_validator(*TOPICS[1:])
    @classmethod
    def _topic_of_its_own(cls, value: str, info: ValidationInfo) -> str:
        """An input topic shares its name with no other topic: the worker would read what
        it writes there (a dead letter, read again, dead-lettered again, for ever), or
        one input's decoder would refuse the other's records."""
        name = info.field_name
        for earlier in TOPICS[: TOPICS.index(name)]:
            if info.data.get(earlier) == value and INPUT_TOPICS & {name, earlier}:
                raise ValueError(
                    f"{value!r} is PROFILER_{earlier.upper()} too; an input topic "
                    "(events, labels, commands) needs a name of its own"
                )
        return value

    @field_validator("kafka_heartbeat_interval_ms")
    @classmethod
    def _beats_within_the_session(cls, value: int, info: ValidationInfo) -> int:
        """A member that beats less often than its session lasts is dropped between beats
        (the client does not check it; a broker that keeps the timeout does)."""
        session = info.data.get("kafka_session_timeout_ms")
        if session is not None and value >= session:
            raise ValueError(
                f"must be below PROFILER_KAFKA_SESSION_TIMEOUT_MS ({session} ms); a third of "
                "it is usual"
            )
        return value

    @field_validator("scored_ttl_days")
    @classmethod
    def _at_least_a_second(cls, value: float) -> float:
        """The TTL goes to Redis in whole seconds, and Redis refuses an expiry of 0."""
        if value * 86_400 < 1:
            raise ValueError("must be at least one second (1/86400 days)")
        return value

    @field_validator("erased_marker_days")
    @classmethod
    def _none_or_a_second(cls, value: float) -> float:
        """Whole seconds go to Redis, where 0 means for ever: less than one would be that."""
        if 0 < value * 86_400 < 1:
            raise ValueError("must be 0 (for ever) or at least one second (1/86400 days)")
        return value

    @field_validator("currency_rates", mode="before")
    @classmethod
    def _rates_from_json(cls, value: object) -> object:
        """The variable holds a JSON object; empty is no rates."""
        if not isinstance(value, str):
            return value
        if not value.strip():
            return {}
        try:
            rates = json.loads(value)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise ValueError(f"not JSON ({type(exc).__name__}: {exc})") from None
        if isinstance(rates, dict) and any(isinstance(rate, bool) for rate in rates.values()):
            raise ValueError("a rate is a number, not true or false")
        return rates

    @field_validator("currency_rates")
    @classmethod
    def _rates_usable(cls, value: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        """What `Currencies` takes (its errors name the code); PROFILER_CURRENCY is the base."""
        Currencies(info.data.get("currency", "USD"), value)
        return value

    @field_validator("model_secret", "fingerprint_key")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        """A key shorter than 16 bytes is refused at start, not at its first use."""
        if value is not None and 0 < len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes (empty: none)")
        return value


def refusals(exc: ValidationError) -> list[str]:
    """One line per refused value, naming its variable: `PROFILER_NAME (entry): why`."""
    lines = []
    for error in exc.errors():
        field, *within = error["loc"]  # within: the key of a JSON setting's entry
        entry = f" ({'.'.join(map(str, within))})" if within else ""
        lines.append(f"PROFILER_{str(field).upper()}{entry}: {error['msg']}")
    return lines
