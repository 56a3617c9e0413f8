"""The start-up checks that need no server: settings that cannot even be used are named
in one line, and what they print of a Redis URL never holds its password."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.preflight import StartupError, broker_options, check_settings, redacted, redis_client
from stream.settings import Settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://user:pw@host:6379/2", "redis://user:***@host:6379/2"),
        ("rediss://:pw@host/0", "rediss://:***@host/0"),
        ("redis://user@host:6379", "redis://user@host:6379"),
        ("redis://u:p@ss:w@[::1]:6380/1", "redis://u:***@[::1]:6380/1"),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
    ],
)
def test_the_password_of_a_redis_url_is_hidden(url: str, shown: str) -> None:
    assert redacted(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://host:6379/0?password=s3cret", "redis://host:6379/0?password=***"),
        (
            "rediss://host/0?username=bob&password=s3cret&ssl_password=k3y#x",
            "rediss://host/0?username=bob&password=***&ssl_password=***#x",
        ),
        ("redis://u:pw@[::1/0?password=s3cret", "redis://u:***@[::1/0?password=***"),
    ],
)
def test_a_password_redis_py_reads_from_the_query_string_is_hidden(url: str, shown: str) -> None:
    """redis-py takes `?password=` (and any other keyword) from the query string as well."""
    assert redacted(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@[::1/0", "redis://user:***@[::1/0"),
        ("redis://:p@ss@[/x]:1", "redis://:***@[/x]:1"),
        ("redis://[/x]:1", "redis://[/x]:1"),
    ],
)
def test_a_url_urllib_cannot_read_still_hides_its_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


@pytest.mark.parametrize(
    "url",
    ["foo://x", "redis://127.0.0.1:99999/0", "redis://h:abc/0", "redis://u:s3cret@[::1/0"],
)
def test_a_redis_url_redis_py_refuses_is_named(url: str) -> None:
    with pytest.raises(StartupError, match=r"^PROFILER_REDIS_URL=") as refused:
        redis_client(Settings(redis_url=url))
    assert "s3cret" not in str(refused.value)
    check_settings(Settings(redis_url=url), redis=False, broker=True)  # not this command's


@pytest.mark.parametrize("bootstrap", ["h:abc", "h:99999", "h:0", "h:", "", "a:1,,b:2", "[::1"])
def test_a_bootstrap_list_with_an_address_that_is_no_host_port_is_named(bootstrap: str) -> None:
    settings = Settings(kafka_bootstrap=bootstrap)
    with pytest.raises(StartupError, match=r"is not a host:port") as refused:
        broker_options(settings)
    assert str(refused.value).startswith(f"PROFILER_KAFKA_BOOTSTRAP={bootstrap}: ")
    check_settings(settings, redis=True, broker=False)  # not this command's


@pytest.mark.parametrize("bootstrap", ["kafka:9092", "a:1, b:2", "[::1]:9092", "kafka"])
def test_the_bootstrap_lists_aiokafka_takes_are_taken(bootstrap: str) -> None:
    assert broker_options(Settings(kafka_bootstrap=bootstrap))["bootstrap_servers"] == bootstrap


def test_a_ca_bundle_missing_or_without_a_certificate_is_named(tmp_path: Path) -> None:
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("not a certificate\n")
    for cafile in (tmp_path / "missing.pem", not_a_certificate):
        settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(cafile))
        with pytest.raises(StartupError, match=rf"^PROFILER_KAFKA_SSL_CAFILE={cafile}: "):
            check_settings(settings, redis=False, broker=True)
