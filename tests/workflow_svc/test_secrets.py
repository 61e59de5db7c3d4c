"""SecretBox, which seals agent credentials at rest: format, binding, rotation, key loading."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from flowforge_common.secrets import DEV_KEY_FILE, SecretBox, SecretBoxError, key_id, load_secret_box, parse_keys
from workflow_svc.settings import WorkflowSettings

OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(32, 64))
CONTEXT = "agent:ten_a:agt_1:auth_config"


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_sealed_values_name_their_key_and_hide_the_plaintext() -> None:
    box = SecretBox([OLD_KEY])
    sealed = box.seal(b'{"token":"s3cret"}', context=CONTEXT)
    version, kid, payload = sealed.split(":")
    assert (version, kid) == ("v1", key_id(OLD_KEY))
    assert b"s3cret" not in base64.urlsafe_b64decode(payload)
    assert box.open(sealed, context=CONTEXT) == b'{"token":"s3cret"}'


def test_every_seal_uses_a_fresh_nonce() -> None:
    box = SecretBox([OLD_KEY])
    assert box.seal(b"same", context=CONTEXT) != box.seal(b"same", context=CONTEXT)


@pytest.mark.parametrize(
    "tamper",
    [
        # A character of the nonce: the last base64 characters may only hold padding bits.
        lambda sealed: sealed[:12] + ("A" if sealed[12] != "A" else "B") + sealed[13:],
        lambda sealed: sealed.replace("v1:", "v2:", 1),
        lambda sealed: "v1:" + "0" * 8 + ":" + sealed.split(":")[2],
        lambda sealed: sealed.split(":")[0],
        lambda sealed: "v1:" + key_id(OLD_KEY) + ":!!!",
    ],
)
def test_tampered_values_do_not_open(tamper: object) -> None:
    box = SecretBox([OLD_KEY])
    sealed = box.seal(b"payload", context=CONTEXT)
    with pytest.raises(SecretBoxError):
        box.open(tamper(sealed), context=CONTEXT)  # type: ignore[operator]


def test_a_value_sealed_for_one_row_does_not_open_for_another() -> None:
    box = SecretBox([OLD_KEY])
    sealed = box.seal(b"payload", context=CONTEXT)
    with pytest.raises(SecretBoxError):
        box.open(sealed, context="agent:ten_b:agt_1:auth_config")


def test_keys_rotate_new_first_old_still_opens() -> None:
    old_sealed = SecretBox([OLD_KEY]).seal(b"old", context=CONTEXT)
    rotated = SecretBox([NEW_KEY, OLD_KEY])
    assert rotated.open(old_sealed, context=CONTEXT) == b"old"
    new_sealed = rotated.seal(b"new", context=CONTEXT)
    assert new_sealed.split(":")[1] == key_id(NEW_KEY)
    with pytest.raises(SecretBoxError, match="unknown key"):
        SecretBox([NEW_KEY]).open(old_sealed, context=CONTEXT)


@pytest.mark.parametrize("keys", [[], [b"short"], [OLD_KEY, b"x" * 31]])
def test_boxes_need_32_byte_keys(keys: list[bytes]) -> None:
    with pytest.raises(ValueError, match="key"):
        SecretBox(keys)


def test_configured_keys_parse_from_standard_or_url_safe_base64() -> None:
    url_safe = base64.urlsafe_b64encode(NEW_KEY).decode().rstrip("=")
    assert parse_keys(f"{url_safe}, {b64(OLD_KEY)}") == [NEW_KEY, OLD_KEY]


@pytest.mark.parametrize("value", ["not base64 at all!", b64(b"x" * 16), f"{b64(OLD_KEY)},"])
def test_bad_configured_keys_are_refused_without_echoing_them(value: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_keys(value)
    assert value.split(",")[0] not in str(caught.value)


def test_the_configured_key_wins_over_the_development_key(tmp_path: Path) -> None:
    settings = WorkflowSettings(data_dir=tmp_path, secrets_key=SecretStr(f"{b64(NEW_KEY)},{b64(OLD_KEY)}"))
    sealed = load_secret_box(settings).seal(b"x", context=CONTEXT)
    assert sealed.split(":")[1] == key_id(NEW_KEY)
    assert not (tmp_path / DEV_KEY_FILE).exists()


def test_the_development_key_is_made_once_private_and_reused(tmp_path: Path) -> None:
    settings = WorkflowSettings(data_dir=tmp_path / "data", secrets_key=None)
    sealed = load_secret_box(settings).seal(b"x", context=CONTEXT)
    key_file = tmp_path / "data" / DEV_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_secret_box(settings).open(sealed, context=CONTEXT) == b"x"
    assert [p.name for p in key_file.parent.iterdir()] == [DEV_KEY_FILE]  # no temp file left behind


def test_a_readable_development_key_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file = tmp_path / DEV_KEY_FILE
    key_file.write_text(b64(OLD_KEY))
    os.chmod(key_file, 0o644)
    box = load_secret_box(WorkflowSettings(data_dir=tmp_path, secrets_key=None))
    assert box.seal(b"x", context=CONTEXT).split(":")[1] == key_id(OLD_KEY)
    assert "0600" in caplog.text
