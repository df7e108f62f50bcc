"""Export files are code (TorchScript): each one's hash is signed with this user's key, and only
files this user exported are loaded."""
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Optional


def signing_key_path() -> Path:
    """This user's signing key: ``$LANDMARK_KEY``, else ``$XDG_CONFIG_HOME/landmark_core/signing_key``, else
    ``~/.config/landmark_core/signing_key``. Never inside a run or artifacts folder, so a folder someone hands you
    cannot bring a key that vouches for its own model files; runs can be renamed and moved freely."""
    configured = os.environ.get("LANDMARK_KEY")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "landmark_core" / "signing_key"


def signing_key(create: bool) -> Optional[bytes]:
    path = signing_key_path()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        except FileExistsError:  # another process made it first
            pass
    return path.read_text().strip().encode()


def signature(key: bytes, meta: dict) -> str:
    """HMAC of everything the prediction depends on: the model file's hash and every other field of export.json."""
    payload = json.dumps({k: v for k, v in meta.items() if k != "signature"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
