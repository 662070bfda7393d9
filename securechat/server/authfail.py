"""Failed logins: the one log line fail2ban matches, and counting them per prefix.

Each failure is logged at WARNING, in this stable format (docs/operations.md, "Logs"):

    auth failure from ADDRESS for nick NICK: REASON

ADDRESS is the peer's IP address, NICK a valid nick (ASCII letters, digits and a few
signs: nothing that could forge a line), REASON one of the constants below. A fail2ban
filter: `failregex = auth failure from <HOST> for nick \\S+: `.
"""

from __future__ import annotations

import logging

from .addresses import PrefixGuards

__all__ = ["NICK_REGISTERED", "PROOF_FAILED", "REGISTRATION_REFUSED", "auth_failed"]

log = logging.getLogger(__name__)

#: A proof signed with the wrong key, or over the wrong challenge.
PROOF_FAILED = "identity proof failed"
#: A guest, or another key, claimed a nick bound to a key.
NICK_REGISTERED = "nick registered to another key"
#: A new nick refused: too many registrations from the network, or none allowed.
REGISTRATION_REFUSED = "registration refused"


def auth_failed(
    guards: PrefixGuards, prefix: str, address: str, nick: str, reason: str, *, count: bool = True
) -> None:
    """Log a failed login (from a session's reader thread) and, if `count`, charge it to
    the failures `prefix` may make before its logins are refused for a while. A refused
    registration is logged but not charged: it is the server's limit, not a guess."""
    log.warning("auth failure from %s for nick %s: %s", address, nick, reason)
    if count:
        guards.login_failed(prefix)
