"""The cipher of stored event state: AES-GCM sealed under the current key, with its key id
beside it; opened with whichever configured key sealed it; clear state read as it is."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from eventsourcing.utils import Environment

from orchestrator.encryption import (
    KEYS_FILE_VARIABLE,
    KEYS_VARIABLE,
    MAGIC,
    EncryptionKeyError,
    KeyedAESCipher,
    MissingEncryptionKey,
    key_id_of,
    new_key,
)

STATE = b'{"metadata":{"email":"jane.doe@example.com"},"amount":1999}'
K1, K2 = new_key("k1"), new_key("k2")


def cipher(keys: str, **more: str) -> KeyedAESCipher:
    return KeyedAESCipher(Environment("Payments", {KEYS_VARIABLE: keys, **more}))


def test_state_is_sealed_under_the_current_key_and_opens_again() -> None:
    sealed = cipher(K1).encrypt(STATE)
    assert sealed.startswith(MAGIC) and key_id_of(sealed) == "k1"
    assert b"jane.doe" not in sealed and STATE not in sealed
    assert cipher(K1).decrypt(sealed) == STATE


def test_each_seal_has_its_own_nonce() -> None:
    assert cipher(K1).encrypt(STATE) != cipher(K1).encrypt(STATE)


def test_after_a_rotation_new_state_uses_the_new_key_and_old_state_still_opens() -> None:
    old = cipher(K1).encrypt(STATE)
    rotated = cipher(f"{K2},{K1}")
    new = rotated.encrypt(STATE)
    assert (key_id_of(old), key_id_of(new)) == ("k1", "k2")
    assert rotated.decrypt(old) == rotated.decrypt(new) == STATE


def test_state_stored_in_clear_before_encryption_is_read_as_it_is() -> None:
    assert key_id_of(STATE) is None
    assert cipher(K1).decrypt(STATE) == STATE
    assert cipher("").decrypt(STATE) == STATE


def test_without_keys_state_is_stored_in_clear() -> None:
    assert cipher("").encrypt(STATE) == STATE


def test_a_key_id_the_configuration_does_not_hold_is_a_clear_error() -> None:
    sealed = cipher(f"{K2},{K1}").encrypt(STATE)
    for keys in (K1, ""):
        with pytest.raises(MissingEncryptionKey) as caught:
            cipher(keys).decrypt(sealed)
        message = str(caught.value)
        assert "key id 'k2'" in message and KEYS_VARIABLE in message


def test_another_key_under_the_same_id_does_not_open_the_state() -> None:
    sealed = cipher(K1).encrypt(STATE)
    with pytest.raises(EncryptionKeyError, match="does not open with key id 'k1'") as caught:
        cipher(new_key("k1")).decrypt(sealed)
    assert not isinstance(caught.value, MissingEncryptionKey)


def test_a_ciphertext_relabelled_with_another_key_id_does_not_open() -> None:
    # The header is the associated data: a key id swapped in the database is detected.
    k1_bytes = K1.split(":", 1)[1]
    both = cipher(f"k1:{k1_bytes},kX:{k1_bytes}")
    sealed = both.encrypt(STATE)
    relabelled = sealed.replace(b"\x02k1", b"\x02kX", 1)
    with pytest.raises(EncryptionKeyError):
        both.decrypt(relabelled)


def test_a_flipped_bit_is_detected() -> None:
    sealed = bytearray(cipher(K1).encrypt(STATE))
    sealed[-1] ^= 1
    with pytest.raises(EncryptionKeyError, match="altered"):
        cipher(K1).decrypt(bytes(sealed))


@pytest.mark.parametrize(
    ("keys", "complaint"),
    [
        ("no-colon-here", "entry 1 is not id:base64-key"),
        (f"{K1},bad id:{K1.split(':')[1]}", "entry 2 is not id:base64-key"),
        ("k1:not*base64", "key 'k1' is not valid base64"),
        (f"k1:{base64.b64encode(b'x' * 20).decode()}", "20 bytes; AES-GCM takes 16, 24 or 32"),
        (f"{K1},{K1}", "key id 'k1' is listed twice"),
    ],
)
def test_misconfigured_keys_are_refused_without_quoting_a_key(keys: str, complaint: str) -> None:
    with pytest.raises(EncryptionKeyError, match=complaint) as caught:
        cipher(keys)
    for entry in keys.split(","):
        secret = entry.partition(":")[2]
        if len(secret) > 8:
            assert secret not in str(caught.value)


def test_keys_come_from_a_secret_file_one_a_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{K2}\n{K1}\n")
    from_file = cipher("", **{KEYS_FILE_VARIABLE: str(path)})
    assert key_id_of(from_file.encrypt(STATE)) == "k2"
    assert from_file.decrypt(cipher(K1).encrypt(STATE)) == STATE
    with pytest.raises(EncryptionKeyError, match="cannot read"):
        cipher("", **{KEYS_FILE_VARIABLE: str(tmp_path / "missing")})


def test_the_applications_prefixed_variable_is_honoured() -> None:
    # eventsourcing's environment looks up PAYMENTS_<name> before <name>.
    scoped = KeyedAESCipher(Environment("Payments", {f"PAYMENTS_{KEYS_VARIABLE}": K2}))
    assert key_id_of(scoped.encrypt(STATE)) == "k2"
