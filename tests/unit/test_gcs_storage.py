"""The GCS's Redis records: sealed under the cluster token; the password never in argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellfleet.gcs.storage import RecordSealer, redact_url, resolve_redis_url


def test_a_sealed_record_opens_only_unaltered_and_in_place() -> None:
    sealer = RecordSealer(b"token", "cluster-a")
    record = sealer.seal("functions", b"f1", b"blob")
    assert sealer.open("functions", b"f1", record) == b"blob"
    assert sealer.open("functions", b"f1", record[:-1] + b"c") is None  # altered value
    assert sealer.open("functions", b"f2", record) is None  # moved to another key
    assert sealer.open("kv", b"f1", record) is None  # moved to another table
    assert sealer.open("functions", b"f1", b"\0" * 32 + b"blob") is None  # forged
    assert sealer.open("functions", b"f1", b"short") is None
    assert RecordSealer(b"other", "cluster-a").open("functions", b"f1", record) is None
    assert RecordSealer(b"token", "cluster-b").open("functions", b"f1", record) is None


def test_table_and_key_boundaries_are_unambiguous() -> None:
    sealer = RecordSealer(b"token", "c")
    assert sealer.open("kv", b"ab", sealer.seal("kva", b"b", b"")) is None


def test_password_file_from_the_url_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    url, password = resolve_redis_url(f"redis://u@h:1/2?password_file={secret}&db=2", {})
    assert (url, password) == ("redis://u@h:1/2?db=2", "s3cret")
    assert resolve_redis_url("redis://h:1", {"CELLFLEET_REDIS_PASSWORD_FILE": str(secret)}) == (
        "redis://h:1", "s3cret")
    assert resolve_redis_url("redis://:pw@h:1", {}) == ("redis://:pw@h:1", None)


@pytest.mark.parametrize("url, message", [
    ("redis://:pw@h:1?password_file={secret}", "password and a password file"),
    ("redis://h:1?password_file={missing}", "cannot read the Redis password file"),
    ("redis://h:1?password_file={empty}", "is empty"),
])
def test_bad_password_files_say_what_is_wrong(tmp_path: Path, url: str, message: str) -> None:
    (tmp_path / "secret").write_text("pw")
    (tmp_path / "empty").write_text("\n")
    paths = {name: tmp_path / name for name in ("secret", "missing", "empty")}
    with pytest.raises(ValueError, match=message):
        resolve_redis_url(url.format(**paths), {})


def test_redacted_urls_hold_no_credentials() -> None:
    assert redact_url("redis://user:pw@host:6379/0") == "redis://host:6379/0"
    assert redact_url("unix:///run/redis.sock?password=pw&db=1") == "unix:///run/redis.sock?db=1"
