"""Event state encrypted at rest, with keys that rotate.

Every event's state (the JSON eventsourcing stores: webhook bodies, metadata, references,
everything) is sealed with AES-GCM before it reaches the store, and opened when it is read.
eventsourcing's own ``AESCipher`` holds one key and writes no key id, so a key could never be
retired; this cipher has the same interface (``CIPHER_TOPIC``) and writes a header:

    b"\\x00pe1" | len(key id) (1 byte) | key id | nonce (12 bytes) | ciphertext | tag (16 bytes)

The header is also the GCM associated data, so a ciphertext cannot be relabelled with another
key id. State stored without the header (every event written before encryption, or with no
key configured) is plain JSON, which never starts with a NUL byte: it is read as it is.

Keys: ``PAYORCH_ENCRYPTION_KEYS`` (or a secret file named by ``PAYORCH_ENCRYPTION_KEYS_FILE``)
is a comma- or newline-separated list of ``id:base64`` (16, 24 or 32 bytes each). The first is
current: new events are sealed with it. The others only open older events: rotate by putting
a new key first and keeping the old ones listed. Without any key, events are stored in clear
(``payorch serve`` says so at start-up) and the cipher still opens nothing it has no key for.

The tamper-evident chain (``orchestrator.audit.chain``) hashes the state as stored, that is
the ciphertext: ``audit verify`` checks it without any key.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import Cipher
from eventsourcing.utils import Environment

KEYS_VARIABLE = "PAYORCH_ENCRYPTION_KEYS"
KEYS_FILE_VARIABLE = "PAYORCH_ENCRYPTION_KEYS_FILE"
CIPHER_TOPIC = "orchestrator.encryption:KeyedAESCipher"
MAGIC = b"\x00pe1"
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZES = (16, 24, 32)
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class EncryptionKeyError(ValueError):
    """The keys are misconfigured, or a stored state does not open."""


class MissingEncryptionKey(EncryptionKeyError):
    """A stored event was sealed with a key id the configuration does not hold: a
    configuration error (the key was retired too soon), not a damaged log."""


class KeyRing:
    """The configured keys by id; ``current`` seals new events (None: store in clear)."""

    def __init__(self, keys: list[tuple[str, bytes]], source: str) -> None:
        self.source = source  # where the keys came from, for messages: never a key
        self.keys: dict[str, AESGCM] = {}
        for key_id, key in keys:
            if key_id in self.keys:
                raise EncryptionKeyError(f"{source}: key id {key_id!r} is listed twice")
            self.keys[key_id] = AESGCM(key)
        self.current = keys[0][0] if keys else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyRing:
        """From PAYORCH_ENCRYPTION_KEYS_FILE (a secret file) or PAYORCH_ENCRYPTION_KEYS."""
        env = os.environ if environ is None else environ
        path = env.get(KEYS_FILE_VARIABLE)
        if path:
            source = f"{KEYS_FILE_VARIABLE} ({path})"
            try:
                text = Path(path).read_text()
            except OSError as e:
                raise EncryptionKeyError(f"cannot read {source}: {e.strerror}") from None
            return cls(parse_keys(text, source), source)
        return cls(parse_keys(env.get(KEYS_VARIABLE, ""), KEYS_VARIABLE), KEYS_VARIABLE)


def parse_keys(text: str, source: str) -> list[tuple[str, bytes]]:
    """``id:base64`` entries, separated by commas or new lines; messages never quote a key."""
    keys = []
    for number, raw in enumerate(re.split(r"[,\n]", text), start=1):
        entry = raw.strip()
        if not entry:
            continue
        key_id, colon, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not colon or not _KEY_ID.fullmatch(key_id):
            raise EncryptionKeyError(
                f"{source}: entry {number} is not id:base64-key "
                "(an id of letters, digits, '.', '_' or '-', then ':' and the key)"
            )
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise EncryptionKeyError(f"{source}: key {key_id!r} is not valid base64") from None
        if len(key) not in KEY_SIZES:
            raise EncryptionKeyError(
                f"{source}: key {key_id!r} is {len(key)} bytes; AES-GCM takes 16, 24 or 32"
            )
        keys.append((key_id, key))
    return keys


def new_key(key_id: str, size: int = 32) -> str:
    """A fresh ``id:base64`` entry for PAYORCH_ENCRYPTION_KEYS."""
    return f"{key_id}:{base64.b64encode(os.urandom(size)).decode()}"


def key_id_of(stored: bytes) -> str | None:
    """The key id a stored state was sealed with; None for state stored in clear."""
    if not stored.startswith(MAGIC) or len(stored) <= len(MAGIC):
        return None
    size = stored[len(MAGIC)]
    return stored[len(MAGIC) + 1 : len(MAGIC) + 1 + size].decode("ascii", "replace")


class KeyedAESCipher(Cipher):
    """eventsourcing's ``Cipher``, with a key id beside each ciphertext (see the module)."""

    def __init__(self, environment: Environment | None = None) -> None:
        # The application's environment holds os.environ and its constructor's env, so a
        # test or the simulator can give keys to one application without touching the process.
        self.ring = KeyRing.from_env(_lookup(environment))
        # Nonces: random, never repeated under one key. Replaceable so that the simulator's
        # stored bytes (and so its log digest) are a function of its seed.
        self.random_bytes: Callable[[int], bytes] = os.urandom

    def encrypt(self, plaintext: bytes) -> bytes:
        current = self.ring.current
        if current is None:
            return plaintext
        header = MAGIC + bytes([len(current)]) + current.encode("ascii")
        nonce = self.random_bytes(NONCE_SIZE)
        return header + nonce + self.ring.keys[current].encrypt(nonce, plaintext, header)

    def decrypt(self, ciphertext: bytes) -> bytes:
        if not ciphertext.startswith(MAGIC):
            return ciphertext  # stored in clear, before encryption or without a key
        start = len(MAGIC) + 1
        if len(ciphertext) < start:
            raise EncryptionKeyError("stored event state is damaged: truncated header")
        end = start + ciphertext[len(MAGIC)]
        key_id = ciphertext[start:end].decode("ascii", "replace")
        key = self.ring.keys.get(key_id)
        if key is None:
            raise MissingEncryptionKey(
                f"a stored event is encrypted with key id {key_id!r}, which {self.ring.source} "
                "does not hold: list that key after the current one (keys are retired only "
                "when no event needs them)"
            )
        header, nonce = ciphertext[:end], ciphertext[end : end + NONCE_SIZE]
        if len(nonce) != NONCE_SIZE or len(ciphertext) < end + NONCE_SIZE + TAG_SIZE:
            raise EncryptionKeyError("stored event state is damaged: truncated ciphertext")
        try:
            return key.decrypt(nonce, ciphertext[end + NONCE_SIZE :], header)
        except InvalidTag:
            raise EncryptionKeyError(
                f"stored event state does not open with key id {key_id!r}: the key listed "
                "under that id is not the one it was sealed with, or the state was altered"
            ) from None


def _lookup(environment: Environment | None) -> dict[str, str]:
    if environment is None:
        return dict(os.environ)
    found = {}
    for name in (KEYS_VARIABLE, KEYS_FILE_VARIABLE):
        value = environment.get(name)
        if value:
            found[name] = value
    return found


def missing_key(error: BaseException) -> MissingEncryptionKey | None:
    """The missing key behind an error, if that is what it is: eventsourcing's mapper wraps
    whatever the cipher raises in its own deserialisation error."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, MissingEncryptionKey):
            return seen
        seen = seen.__cause__
    return None


def encryption_configured(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get(KEYS_FILE_VARIABLE) or env.get(KEYS_VARIABLE, "").strip())
