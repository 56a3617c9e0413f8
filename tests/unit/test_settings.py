"""Settings refuse, at start, values the Kafka client or the encoder would only trip over later."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from profiling.behaviour import keyed_token, token
from stream.model_setup import build_models
from stream.settings import Settings


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
