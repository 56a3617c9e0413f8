"""Settings refuse, at start, values the Kafka client or the encoder would only trip over later."""

from __future__ import annotations

import time

import faust
import pytest
from pydantic import ValidationError

from profiling.behaviour import keyed_token, token
from stream.model_setup import build_models
from stream.settings import MAX_SECONDS, Settings, refusals


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kafka_security_protocol", "TLS"),
        ("kafka_sasl_mechanism", "GSSAPI"),
        ("producer_compression", "brotli"),
        ("device", "gpu"),
        ("device", "cuda:x"),
        ("group_id", ""),
        ("topic_events", ""),
        ("topic_dlq", "dead letters"),
        ("topic_updates", "a/b"),
        ("topic_alerts", "x" * 250),
        ("topic_labels", "."),
        ("topic_commands", ".."),
    ],
)
def test_a_value_kafka_or_torch_would_refuse_is_refused_naming_the_field(
    field: str, value: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(**{field: value})  # type: ignore[arg-type]
    assert [error["loc"] for error in refused.value.errors()] == [(field,)]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kafka_security_protocol", "SASL_SSL"),
        ("kafka_sasl_mechanism", "SCRAM-SHA-512"),
        ("producer_compression", "zstd"),
        ("device", "cuda:1"),
        ("topic_events", "shop-1.behavior_events"),
    ],
)
def test_the_documented_values_are_taken(field: str, value: str) -> None:
    credentials = {"kafka_sasl_username": "u", "kafka_sasl_password": "p"}
    settings = Settings(**{field: value, **credentials})  # type: ignore[arg-type]
    assert getattr(settings, field) == value


def test_an_empty_compression_or_device_means_the_default() -> None:
    settings = Settings(producer_compression="", device="")  # type: ignore[arg-type]
    assert (settings.producer_compression, settings.device) == (None, None)
    assert Settings(device="auto").device is None


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_without_a_user_and_password_is_refused(protocol: str) -> None:
    for credentials in ({}, {"kafka_sasl_username": "u"}, {"kafka_sasl_password": "p"}):
        with pytest.raises(ValidationError, match="PROFILER_KAFKA_SASL_USERNAME"):
            Settings(kafka_security_protocol=protocol, **credentials)  # type: ignore[arg-type]
    assert (
        Settings(
            kafka_security_protocol=protocol,  # type: ignore[arg-type]
            kafka_sasl_username="u",
            kafka_sasl_password="p",  # type: ignore[arg-type]
        ).kafka_sasl_username
        == "u"
    )


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_with_an_empty_password_is_refused(protocol: str) -> None:
    """An empty variable (`${PROFILER_KAFKA_SASL_PASSWORD:-}` in a compose file) is no password."""
    with pytest.raises(ValidationError, match="PROFILER_KAFKA_SASL_USERNAME and this password"):
        Settings(
            kafka_security_protocol=protocol,  # type: ignore[arg-type]
            kafka_sasl_username="u",
            kafka_sasl_password="",  # type: ignore[arg-type]
        )


def test_a_fingerprint_key_reaches_the_models_and_a_short_one_is_refused() -> None:
    key = "a-fingerprint-key-of-32-bytes-ok"
    models = build_models(Settings(fingerprint_key=key))  # type: ignore[arg-type]
    assert models is not None
    assert models.fingerprint("device-1") == keyed_token(key.encode())("device-1")
    assert models.fingerprint("device-1") != token("device-1")
    unkeyed = build_models(Settings())
    assert unkeyed is not None and unkeyed.fingerprint is token
    with pytest.raises(ValidationError, match="at least 16 bytes"):
        Settings(fingerprint_key="short")  # type: ignore[arg-type]


FLOAT_FIELDS = [name for name, info in Settings.model_fields.items() if info.annotation is float]


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e999"])
def test_no_float_setting_takes_an_infinite_or_nan_value(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(**{field: value})  # type: ignore[arg-type]
    assert [error["loc"] for error in refused.value.errors()] == [(field,)]


# Each duration setting and the seconds in its unit.
DURATIONS = [
    ("profile_ttl_s", 1),
    ("embedding_cache_ttl_s", 1),
    ("heartbeat_s", 1),
    ("held_back_ttl_s", 1),
    ("model_checkpoint_s", 1),
    ("scored_ttl_days", 86_400),
    ("erased_marker_days", 86_400),
    ("category_half_life_days", 86_400),
    ("vector_long_half_life_days", 86_400),
    ("vector_short_half_life_hours", 3600),
]
INT64_MAX = 2**63 - 1


@pytest.mark.parametrize(("field", "unit_s"), DURATIONS)
def test_a_duration_redis_would_refuse_to_expire_is_refused_at_start(
    field: str, unit_s: int
) -> None:
    """Redis refuses an expiry whose milliseconds from now overflow 64 bits ("invalid expire
    time"), and only at write time; every duration is capped far below that, at 100 years."""
    longest = getattr(Settings(**{field: MAX_SECONDS // unit_s}), field)  # type: ignore[arg-type]
    assert longest * unit_s == MAX_SECONDS
    assert time.time_ns() // 1_000_000 + MAX_SECONDS * 1000 < INT64_MAX
    for value in (MAX_SECONDS // unit_s + 1, 1e12, 10**17):
        with pytest.raises(ValidationError) as refused:
            Settings(**{field: value})  # type: ignore[arg-type]
        assert [error["loc"] for error in refused.value.errors()] == [(field,)]


def test_a_scored_ttl_under_a_second_is_refused_not_rounded_to_no_expiry() -> None:
    """The store sends whole seconds, and Redis refuses `SET ... EX 0`."""
    with pytest.raises(ValidationError, match="at least one second"):
        Settings(scored_ttl_days=0.5 / 86_400)
    assert Settings(scored_ttl_days=1 / 86_400).scored_ttl_days * 86_400 >= 1


def test_an_erased_marker_under_a_second_is_refused_not_kept_for_ever() -> None:
    """Whole seconds go to Redis, where 0 keeps the marker for ever."""
    with pytest.raises(ValidationError, match="at least one second"):
        Settings(erased_marker_days=0.5 / 86_400)
    assert Settings(erased_marker_days=0).erased_marker_days == 0


def test_an_embedding_cache_of_no_entries_is_refused() -> None:
    """The in-process LRU needs room for one vector; 0 crashed the worker as it started."""
    with pytest.raises(ValidationError) as refused:
        Settings(embedding_cache_size=0)
    assert [error["loc"] for error in refused.value.errors()] == [("embedding_cache_size",)]
    assert Settings(embedding_cache_size=1).embedding_cache_size == 1


@pytest.mark.parametrize(
    "field",
    [
        "kafka_session_timeout_ms",
        "kafka_heartbeat_interval_ms",
        "batch_max_ms",
        "producer_linger_ms",
    ],
)
def test_a_kafka_time_beyond_32_bits_is_refused_at_start(field: str) -> None:
    """The protocol carries these as int32: aiokafka failed on them deep in its fetcher
    (the worker then hung) or in the group's coordination."""
    # The heartbeat beats within the session, which stops at the same bound.
    longest = 2**31 - 1 - (field == "kafka_heartbeat_interval_ms")
    session = {"kafka_session_timeout_ms": 2**31 - 1}
    assert getattr(Settings(**{**session, field: longest}), field) == longest  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as refused:
        Settings(**{**session, field: 2**31})  # type: ignore[arg-type]
    assert [error["loc"] for error in refused.value.errors()] == [(field,)]


def test_the_faust_apps_own_clients_get_the_kafka_security_settings() -> None:
    """`faust -A stream.app worker` ran its own clients in plain text whatever was set."""
    from stream.app import broker_credentials

    assert broker_credentials(Settings()) is None
    sasl = Settings(
        kafka_security_protocol="SASL_SSL",  # type: ignore[arg-type]
        kafka_sasl_mechanism="SCRAM-SHA-256",  # type: ignore[arg-type]
        kafka_sasl_username="u",
        kafka_sasl_password="p",  # type: ignore[arg-type]
    )
    credentials = broker_credentials(sasl)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("u", "p")
    assert credentials.mechanism.value == "SCRAM-SHA-256" and credentials.ssl_context is not None
    tls = broker_credentials(Settings(kafka_security_protocol="SSL"))  # type: ignore[arg-type]
    assert isinstance(tls, faust.SSLCredentials)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("topic_dlq", "behavior-events", "PROFILER_TOPIC_EVENTS"),
        ("topic_updates", "behavior-events", "PROFILER_TOPIC_EVENTS"),
        ("topic_commands", "behavior-events", "PROFILER_TOPIC_EVENTS"),
        ("topic_labels", "behavior-events.dlq", "PROFILER_TOPIC_DLQ"),
        ("topic_commands", "fraud-labels", "PROFILER_TOPIC_LABELS"),
        ("topic_commands", "fraud-alerts", "PROFILER_TOPIC_ALERTS"),
    ],
)
def test_an_input_topic_that_is_another_topic_too_is_refused(
    field: str, value: str, named: str
) -> None:
    """A DLQ on the events topic had a worker dead-letter its own dead letters for ever
    (one bad record: a thousand dead letters in 40 s, and never idle)."""
    with pytest.raises(ValidationError, match=named) as refused:
        Settings(**{field: value})  # type: ignore[arg-type]
    assert [error["loc"] for error in refused.value.errors()] == [(field,)]


def test_output_topics_may_share_a_name() -> None:
    shared = Settings(topic_alerts="profile-updates")
    assert shared.topic_alerts == shared.topic_updates


def test_a_heartbeat_no_more_often_than_the_session_lasts_is_refused() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(kafka_session_timeout_ms=10_000, kafka_heartbeat_interval_ms=10_000)
    assert [error["loc"] for error in refused.value.errors()] == [("kafka_heartbeat_interval_ms",)]
    assert "PROFILER_KAFKA_SESSION_TIMEOUT_MS" in str(refused.value)
    Settings(kafka_session_timeout_ms=10_000, kafka_heartbeat_interval_ms=3_000)


def test_an_empty_encoder_variable_is_the_default_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFILER_ENCODER_MODEL", "")
    assert Settings().encoder_model == "auto"


@pytest.mark.parametrize(("field", "longest"), [("category_slots", 512), ("dedupe_window", 16_384)])
def test_a_per_user_table_past_its_bound_is_refused_at_start_naming_the_variable(
    field: str, longest: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both had no upper bound: a default typed with an extra zero (640 slots, a window of
    20480) grew every busy user's state, which each batch reads and rewrites whole."""
    variable = f"PROFILER_{field.upper()}"
    monkeypatch.setenv(variable, str(longest))
    assert getattr(Settings(), field) == longest
    for value in (longest + 1, Settings.model_fields[field].default * 10):
        monkeypatch.setenv(variable, str(value))
        with pytest.raises(ValidationError) as refused:
            Settings()
        assert refusals(refused.value) == [
            f"{variable}: Input should be less than or equal to {longest}"
        ]
    assert f"at most {longest}" in str(Settings.model_fields[field].description)
