"""The bridges' shared key: read from a file only its owner can read.

A key file holds 32 to 128 hex digits (``python -c 'import secrets; print(secrets.token_hex(32))'``),
or 16 to 64 raw bytes; every bridge that should hear the others gets the same file. A file that its
group or others may read or write is refused, as ssh refuses such a private key.
"""

from __future__ import annotations

import os
import stat
import string

from ombm.transport.datagram import check_key

__all__ = ["load_key"]


def load_key(path: str) -> bytes:
    """The key in ``path``; PermissionError if others may read it, ValueError if it is no key."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise PermissionError(f"{path} has mode {mode:04o}: a key file must be readable by its owner only "
                                  f"(chmod 600 {path})")
        data = f.read(1024)
    text = data.strip()
    if text and len(text) % 2 == 0 and all(chr(c) in string.hexdigits for c in text):
        data = bytes.fromhex(text.decode())
    try:
        return check_key(data)
    except ValueError:
        raise ValueError(f"{path} holds no key: give 32-128 hex digits or 16-64 bytes") from None
