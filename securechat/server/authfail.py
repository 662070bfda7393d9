"""Failed logins: the one log line fail2ban matches, and counting them per prefix.

Each failure is logged at WARNING, in this stable format (docs/operations.md, "Logs"):

    auth failure from ADDRESS for nick NICK: REASON

ADDRESS is the peer's IP address (an IPv4-mapped IPv6 address as plain IPv4, as a
firewall sees it), NICK a valid nick (ASCII letters, digits and a few
signs: nothing that could forge a line), REASON one of the constants below. A fail2ban
filter: `failregex = auth failure from <HOST> for nick \\S+: `.
"""

from __future__ import annotations

import logging

from .addresses import PrefixGuards, shown_address

__all__ = ["NICK_REGISTERED", "PROOF_FAILED", "auth_failed", "registration_refused"]

log = logging.getLogger(__name__)

#: A proof signed with the wrong key, or over the wrong challenge.
PROOF_FAILED = "identity proof failed"
#: A guest, or another key, claimed a nick bound to a key.
NICK_REGISTERED = "nick registered to another key"


def auth_failed(guards: PrefixGuards, prefix: str, address: str, nick: str, reason: str) -> None:
    """Log a failed login (from a session's reader thread) and charge it to the failures
    `prefix` may make for `nick` before its claims of that nick without a proof are
    refused for a while."""
    log.warning("auth failure from %s for nick %s: %s", shown_address(address), nick, reason)
    guards.login_failed(prefix, nick)


def registration_refused(address: str, nick: str, why: str) -> None:
    """Log a refused registration: the server's own limit, not a guess, so in a format of
    its own that the fail2ban filter does not match (a class registering its nicks must
    not get its network banned)."""
    log.warning("registration refused for nick %s from %s: %s", nick, shown_address(address), why)
