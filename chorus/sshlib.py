"""asyncssh, imported in one place with cryptography's DSA deprecation silenced.

asyncssh (2.24 and earlier) touches cryptography's DSA classes while it is
imported; cryptography 51 deprecated DSA, so the first import prints five
``CryptographyDeprecationWarning: DSA is deprecated`` blocks before chorus
says anything (and fails under ``-W error``). chorus never offers or accepts
DSA keys, so the warning tells a user nothing. Exactly that warning, from
asyncssh's modules, is ignored here. Drop this module once an asyncssh release
imports cleanly under the newest cryptography (``tools/check-latest.sh`` shows it).

Modules import asyncssh lazily (launch start-up stays fast), always from here::

    from chorus.sshlib import asyncssh
"""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

__all__ = ["asyncssh"]

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore",
        message="DSA is deprecated",
        category=CryptographyDeprecationWarning,
        module=r"asyncssh\.",
    )
    import asyncssh
