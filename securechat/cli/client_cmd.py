"""`securechat client` (terminal or `--json`) and `securechat send`."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import ssl
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..protocol import Code, fold_nick, is_valid_nick
from .common import DEFAULT_CERT_DIR, DEFAULT_PORT, UsageError, check_port

if TYPE_CHECKING:
    from ..client import Client
    from ..client.handoff import HandoffServer
    from ..client.keystore import Keystore
    from ..client.whispers import WhisperKeys

__all__ = ["EXIT_DELIVERED", "EXIT_FAILED", "EXIT_STORED", "add_parsers"]

#: How long `send` waits, before it leaves, for the server to confirm its keys are published.
_PUBLISH_WAIT = 5.0

#: `securechat send` exit statuses (2 is a usage error, as everywhere).
EXIT_DELIVERED = 0
EXIT_FAILED = 1
EXIT_STORED = 3


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    client = sub.add_parser("client", help="join a chat server in this terminal")
    _connection_args(client)
    client.add_argument("--no-color", action="store_true", help="no colours (also: the NO_COLOR variable)")
    client.add_argument("--no-bell", action="store_true", help="no terminal bell on whispers and mentions")
    client.add_argument(
        "--json",
        action="store_true",
        help="for programs: one JSON object per event on stdout, one JSON command per line on stdin",
    )
    client.set_defaults(run=run_client)

    send = sub.add_parser(
        "send",
        help="send one whisper (or one room message) and exit",
        description="Exit status: 0 delivered (or, for --room, relayed), 3 stored for an offline "
        "recipient, 1 failed, 2 usage error.",
    )
    _connection_args(send)
    target = send.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", metavar="NICK", help="whisper NICK, end-to-end encrypted")
    target.add_argument("--room", action="store_true", help="say it in the room instead (not encrypted)")
    send.add_argument("text", nargs="?", default=None, help="what to send (default: read standard input)")
    send.add_argument(
        "--wait",
        type=float,
        default=5.0,
        help="seconds to wait for a whisper's delivery before settling for stored (default: %(default)s)",
    )
    # No nick given: the identity this machine already has on that server (see `_known_nick`).
    send.set_defaults(run=run_send, nick=None)

    link = sub.add_parser(
        "link",
        help="make this machine another device of your identity (type /link in your chat client first)",
        description="Pairs this machine with the device holding NICK's identity key by two short "
        "codes, one typed on each; the server relays them but cannot take part. Exit status: 0 "
        "linked, 1 not linked.",
    )
    _connection_args(link)
    link.set_defaults(run=run_link)


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nick",
        default=os.environ.get("USER", ""),
        help="your nick: 1-24 of A-Z a-z 0-9 _ - . (default: $USER)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="server port (default: %(default)s)")
    parser.add_argument(
        "--cafile",
        type=Path,
        default=None,
        help="CA certificate to trust, PEM (default: certs/ca.pem if present, else the system's CAs)",
    )
    parser.add_argument(
        "--server-name",
        default=None,
        help="name the server certificate must carry (default: the --host value)",
    )
    parser.add_argument(
        "--keys",
        type=Path,
        default=None,
        help="keystore directory (default: $XDG_DATA_HOME/securechat/HOST_PORT/NICK)",
    )
    parser.add_argument(
        "--passphrase",
        default=None,
        help="passphrase for the keystore (visible to other local users in `ps`: prefer "
        "SECURECHAT_PASSPHRASE or the prompt)",
    )
    parser.add_argument(
        "--guest", action="store_true", help="no identity: chat in public only, under an unregistered nick"
    )


def _client(args: argparse.Namespace, *, reconnect: bool, interactive: bool = True) -> Client:
    """A connected client for the connection options.

    Raises `UsageError` (bad options, keystore problems), `ConnectError` and `LoginRejected`.
    `interactive` False never prompts for a passphrase (e.g. while the chat screen is up).
    """
    from ..client import LoginRejected

    client, made = _unconnected(args, reconnect=reconnect, interactive=interactive)
    try:
        client.connect()
    except LoginRejected as exc:
        raise UsageError(_refused_login(args.nick, exc, made, _linked_place(client))) from None
    _remember(args, client)
    return client


def _linked_place(client: Client) -> Path | None:
    """Where the keys of `client` are, if they are a linked device's (None otherwise)."""
    from ..client.keystore import Keystore

    keys = client.keys
    if keys is None or not keys.linked or not isinstance(keys.storage, Keystore):
        return None
    return keys.storage.directory


def _refused_login(nick: str, refused: Exception, made: Keystore | None, linked: Path | None = None) -> str:
    """What to tell the user when the server refused the login; removes `made` (a keystore
    created in this run for it) when the nick turned out to be someone else's.

    The case this is for: a rename to NICK that the server carried out just as the client
    stopped, before it heard so. The keystore is still under the old nick, so starting as
    NICK makes a new identity, which NICK's owner (our own old key) refuses. That fresh
    keystore never did anything; left, it would stand where the rename's move must go.
    """
    from ..client import LoginRejected
    from ..e2e.errors import KeystoreError

    text = f"the server refused the login: {refused}"
    if (
        isinstance(refused, LoginRejected)
        and refused.code == Code.NICK_REGISTERED
        and linked is not None
        and made is None
    ):
        return (
            f"{text}. This device's keys were linked to {nick}, and {nick}'s device list no longer "
            f"names them (the device was unlinked). To use it as {nick} again, move {linked} away "
            f"and run: securechat link --nick {nick}"
        )
    if not (isinstance(refused, LoginRejected) and refused.code == Code.NICK_REGISTERED and made is not None):
        return text
    try:
        made.remove()
    except KeystoreError as exc:
        return f"{text}; {exc}"
    return (
        f"{nick} is registered to another key (the keys just made for it are deleted again). "
        f"If you renamed yourself to {nick}, start with your old nick (--nick OLD): your keystore "
        "is still under it, and that start finishes the rename."
    )


def _renamed_away(new: str) -> str:
    """What to tell someone who started with the nick they renamed away from."""
    return f'you renamed yourself to {new}; start with --nick {new} (or set nick = "{new}" in your config)'


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext:
    """The TLS context for the server: trusting --cafile, else certs/ca.pem when there is
    one, else the system's CAs. Raises `UsageError`."""
    from ..transport import client_context

    cafile = args.cafile
    if cafile is None and (DEFAULT_CERT_DIR / "ca.pem").is_file():
        cafile = DEFAULT_CERT_DIR / "ca.pem"
    if cafile is not None and not cafile.is_file():
        raise UsageError(f"CA file {cafile} not found")
    try:
        return client_context(cafile)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load CA file {cafile}: {exc}") from None


def _server_key(args: argparse.Namespace) -> str | None:
    """The server's certificate key (client/serverkey.py), learnt once per run; None for
    a guest (who has no keystore to file) or when the server cannot be reached."""
    from ..client.serverkey import server_key

    if args.guest:
        return None
    if not hasattr(args, "_server_key"):
        check_port(args.port)
        args._server_key = server_key(args.host, args.port, _tls_context(args))
    key: str | None = args._server_key
    return key


def _keys_dir(args: argparse.Namespace) -> Path:
    """The directory of the keystore to use: --keys, or the one filed for this server and
    nick. Found by the host as typed when it can be; otherwise, if this machine has met
    servers on that port before, by the server's certificate key (one extra handshake),
    so that an identity made under another name of the same server is found."""
    from ..client.keystore import Keystore, default_keystore_dir, remembers_servers

    if args.keys is not None:
        directory: Path = args.keys
        return directory
    directory = default_keystore_dir(args.host, args.port, args.nick)
    if Keystore.exists(directory) or args.guest or not remembers_servers(args.port):
        return directory
    return default_keystore_dir(args.host, args.port, args.nick, _server_key(args))


def _remember(args: argparse.Namespace, client: Client) -> None:
    """After a login: file the place of the keystore in use under the server's
    certificate key, so the next start finds it whatever the host is typed as."""
    from ..client.keystore import Keystore, remember_server

    keys = client.keys
    if args.keys is not None or client.server_key is None or keys is None:
        return
    if isinstance(keys.storage, Keystore):
        with contextlib.suppress(OSError):  # unremembered, the host spelling still files it
            remember_server(client.server_key, args.port, keys.storage.directory.parent)


def _unconnected(
    args: argparse.Namespace, *, reconnect: bool, interactive: bool = True
) -> tuple[Client, Keystore | None]:
    """`_client` before `connect`: options checked, keys open. Also the keystore when it
    was made in this run (None if it existed, or for a guest). Raises `UsageError`."""
    from ..client import Client
    from ..client.keystore import Keystore, KeystoreBusy, RoomsFile, default_keystore_dir, renamed_to
    from ..client.rooms import RoomStore
    from ..e2e.errors import KeystoreError

    check_port(args.port)
    if not is_valid_nick(args.nick):
        raise UsageError(
            f"{args.nick!r} is not a valid nick: use 1-24 of A-Z a-z 0-9 _ - . (pass --nick)"
            if args.nick
            else "no nick: pass --nick NAME"
        )
    context = _tls_context(args)
    keys = None
    made: Keystore | None = None
    # The rooms to join again at the next start: in the keystore (sealed with it), or for
    # a guest in a rooms.json where its nick's keystore would be.
    rooms_store: RoomStore = RoomsFile(default_keystore_dir(args.host, args.port, args.nick))
    if not args.guest:
        directory = _keys_dir(args)
        existed = Keystore.exists(directory)
        moved_to = renamed_to(directory)
        if moved_to is not None:
            # /nick moved the keystore away; a config or script still naming the old nick
            # must not quietly become a second identity (the rename freed the nick).
            raise UsageError(_renamed_away(moved_to))
        try:
            keys = _open_keys(directory, args.nick, args.passphrase, interactive=interactive)
        except KeystoreBusy as exc:
            raise _KeysBusy(f"cannot open your keys in {directory}: {exc}") from None
        except (KeystoreError, ValueError, OSError) as exc:
            raise UsageError(f"cannot open your keys in {directory}: {exc}") from None
        if fold_nick(keys.identity.user) != fold_nick(args.nick) and keys.renaming() is None:
            # A keystore in a directory of the user's choice stays put on a rename: it is
            # the identity's binding that tells.
            if isinstance(keys.storage, Keystore):
                keys.storage.close()
            raise UsageError(_renamed_away(keys.identity.user))
        storage = keys.storage
        if isinstance(storage, Keystore):
            rooms_store = storage
            made = None if existed else storage
    client = Client(
        args.nick,
        context=context,
        host=args.host,
        port=args.port,
        server_hostname=args.server_name,
        keys=keys,
        reconnect=reconnect,
        rooms_store=rooms_store,
    )
    return client, made


def _connected(args: argparse.Namespace, *, reconnect: bool) -> Client | None:
    """`_client`, with connection failures told to the user (None then). With `reconnect`
    (a chat client), a server that is not up yet is waited for, saying so."""
    from ..client import ConnectError, LoginRejected
    from ..client.backoff import Backoff

    backoff = Backoff()
    attempt = 0
    client, made = _unconnected(args, reconnect=reconnect)
    while True:
        try:
            client.connect()
            _remember(args, client)
            return client
        except ConnectError as exc:
            if not (reconnect and exc.retryable):
                print(f"securechat: {exc}", file=sys.stderr)
                return None
            delay = backoff.delay(attempt)
            attempt += 1
            print(
                f"securechat: {exc}; waiting for the server, trying again in {delay:.1f} s", file=sys.stderr
            )
            time.sleep(delay)  # a person waits here; Ctrl-C stops it
        except LoginRejected as exc:
            if not (reconnect and exc.code == Code.BUSY):
                print(
                    f"securechat: {_refused_login(args.nick, exc, made, _linked_place(client))}",
                    file=sys.stderr,
                )
                return None
            # Too much from our network right now (failed logins, say): later, not never.
            delay = backoff.delay(attempt)
            attempt += 1
            print(
                f"securechat: the server is busy: {exc.reason}; trying again in {delay:.1f} s",
                file=sys.stderr,
            )
            time.sleep(delay)


def _open_keys(
    directory: Path, nick: str, passphrase: str | None, *, interactive: bool = True
) -> WhisperKeys:
    """Open (or create, on first use) the keystore; asks for a passphrase on a terminal."""
    from ..client.keystore import Keystore
    from ..client.whispers import WhisperKeys

    if passphrase is None:
        passphrase = os.environ.get("SECURECHAT_PASSPHRASE")
    may_prompt = interactive and sys.stdin.isatty()
    created = not Keystore.exists(directory)
    if not created:
        if passphrase is None and Keystore.needs_passphrase(directory) and may_prompt:
            passphrase = getpass.getpass(f"Passphrase for {directory}: ")
        store = Keystore.open(directory, passphrase)
    else:
        if passphrase is None and may_prompt:
            print(f"Creating your identity keys in {directory}.", file=sys.stderr)
            passphrase = getpass.getpass("Passphrase to protect them (Enter for none): ")
            if passphrase and getpass.getpass("Again: ") != passphrase:
                raise ValueError("the passphrases did not match")
        store = Keystore.create(directory, passphrase or None)
    if not store.protected and interactive and created:  # said once, when it is made
        print(
            f"securechat: note: your keys in {directory} are unprotected (no passphrase); "
            "anyone who can read that directory can read your whispers.",
            file=sys.stderr,
        )
    return WhisperKeys.in_keystore(store, nick)


def run_client(args: argparse.Namespace) -> int:
    if args.json and not args.guest:
        from ..client.keystore import Keystore

        directory = _keys_dir(args)
        if Keystore.exists(directory) and Keystore.holder(directory) is not None:
            return _attach_json(directory)
    client = _connected(args, reconnect=True)
    if client is None:
        return EXIT_FAILED
    handoff = _Handoff()
    try:
        handoff.follow(client)
        return _run_client(args, client, handoff)
    finally:
        handoff.close()


class _Handoff:
    """The handoff of the client that holds its keystore now: while it runs, `securechat
    send` and `client --json` under the same identity go through it (client/handoff.py)
    instead of failing on the lock. It follows /identity to the new client. Used by the
    thread that runs the client (and the chat screen's, for /identity)."""

    def __init__(self) -> None:
        self._server: HandoffServer | None = None

    def follow(self, client: Client) -> None:
        from ..client.handoff import HandoffServer
        from ..client.keystore import Keystore

        self.close()
        storage = client.keys.storage if client.keys is not None else None
        if not isinstance(storage, Keystore):
            return
        server = HandoffServer(client, storage.directory)
        try:
            server.start()
        except OSError as exc:  # chat goes on; `send` under this identity says who holds the keys
            print(f"securechat: note: no handoff for `securechat send`: {exc}", file=sys.stderr)
            return
        self._server = server

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


def _run_client(args: argparse.Namespace, client: Client, handoff: _Handoff) -> int:
    if args.json:
        from ..client.jsonmode import run_json

        return run_json(client, sys.stdin, sys.stdout)
    from ..client.display import Theme
    from ..client.tui import run_tui

    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    theme = Theme(
        color=not args.no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty(),
        ascii_only=encoding not in ("utf8", "utf_8"),
    )

    def switch_to(nick: str) -> Client:
        # /identity NICK (not /nick, which renames this identity): log in as another
        # identity. The keys of the nick being left stay where they are; NICK uses its own.
        try:
            new = _client(
                argparse.Namespace(**{**vars(args), "nick": nick, "keys": None}),
                reconnect=True,
                interactive=False,
            )
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        handoff.follow(new)  # the chat screen lets go of the old keys once it has left them
        return new

    return run_tui(client, theme=theme, bell=not args.no_bell, switch_to=switch_to)


def run_send(args: argparse.Namespace) -> int:
    from ..client.keystore import Keystore
    from ..e2e.errors import BundleError, IdentityChanged, NotTrusted
    from ..protocol import Message, WhisperStatus

    if not 0 <= args.wait <= 600:  # also refuses nan and inf
        raise UsageError("--wait: seconds, from 0 to 600")
    if args.nick is None:
        args.nick = _known_nick(args)
    directory = _keys_dir(args)
    told_passphrase = args.passphrase is not None or "SECURECHAT_PASSPHRASE" in os.environ
    if not args.guest and not Keystore.exists(directory) and not sys.stdin.isatty() and not told_passphrase:
        # A new identity made silently by a script is one its owner never meant: the
        # nick is registered to it, and their real keys are refused from then on.
        raise UsageError(
            f"no keys for {args.nick} on {args.host}:{args.port} here, and `send` makes no new "
            "identity without a terminal to ask for its passphrase (or SECURECHAT_PASSPHRASE set, "
            f"empty for none): run `securechat client --nick {args.nick}` once, or pass --nick "
            "for the identity you have"
        )
    text = args.text if args.text is not None else sys.stdin.read().rstrip("\n")
    if not text:
        raise UsageError("nothing to send: give TEXT or pipe it in")
    if not args.guest and Keystore.exists(directory) and Keystore.holder(directory) is not None:
        return _send_by_holder(args, directory, text)
    try:
        client = _connected(args, reconnect=False)
    except _KeysBusy:
        return _send_by_holder(args, directory, text)  # a client started since we looked
    if client is None:
        return EXIT_FAILED
    try:
        if args.room:
            client.say(text)
            client.wait_for_any(Message, args.wait or 5.0)  # the server's echo: it was relayed
            print("relayed to the room", file=sys.stderr)
            return EXIT_DELIVERED
        msg_id = client.whisper(args.to, text)
        status = "sent"
        try:
            while status != "delivered":
                item = client.wait_for_any(WhisperStatus, args.wait)
                if isinstance(item, WhisperStatus) and item.id == msg_id:
                    status = item.status
        except TimeoutError:
            pass
        return _whisper_outcome(args.to, status)
    except IdentityChanged as exc:
        print(f"securechat: not sent: {exc}; check with `securechat client` and /verify", file=sys.stderr)
        return EXIT_FAILED
    except (BundleError, LookupError, NotTrusted, ConnectionError, TimeoutError, ValueError) as exc:
        print(f"securechat: not sent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if client.keys is not None:
            # A first login publishes the identity's keys: they must be out before we go,
            # or nobody could start a session with this identity until its next login.
            client.keys.wait_published(_PUBLISH_WAIT)
        client.close()


def _whisper_outcome(to: str, status: str) -> int:
    """What `send` says and exits with, given the whisper's last status ("sent": none)."""
    if status == "sent":
        print("not confirmed by the server in time", file=sys.stderr)
        return EXIT_FAILED
    print(f"whisper to {to}: {status}", file=sys.stderr)
    return EXIT_DELIVERED if status == "delivered" else EXIT_STORED if status == "stored" else EXIT_FAILED


def _send_by_holder(args: argparse.Namespace, directory: Path, text: str) -> int:
    """`send` while another process (a chat client, a bot) holds the keystore: that
    process sends it (client/handoff.py), and nobody is thrown out."""
    from ..client.handoff import HandoffRefused, hand_off

    request: dict[str, object] = (
        {"type": "say", "text": text}
        if args.room
        else {"type": "whisper", "to": args.to, "text": text, "wait": args.wait}
    )
    status = "sent"
    try:
        # The holder may first fetch keys and start a session: its own timeouts, plus the wait.
        for answer in hand_off(directory, request, timeout=args.wait + 60.0):
            kind = answer.get("type")
            if kind == "error":
                print(f"securechat: not sent: {answer.get('reason')}", file=sys.stderr)
                return EXIT_FAILED
            if kind == "relayed":
                print("relayed to the room (by your running client)", file=sys.stderr)
                return EXIT_DELIVERED
            if kind == "whisper_status":
                status = str(answer.get("status"))
    except HandoffRefused:
        print(f"securechat: not sent: {_no_handoff(directory)}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ValueError) as exc:
        print(f"securechat: not sent: your running client stopped answering: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("(sent by your running client, which holds your keys)", file=sys.stderr)
    return _whisper_outcome(args.to, status)


def _known_nick(args: argparse.Namespace) -> str:
    """`send` without --nick (nor one in the config file): a guest is $USER; otherwise the
    one identity this machine has on that server. Raises `UsageError` if there is none,
    or several, or a --keys directory (whose nick cannot be read without opening it)."""
    from ..client.keystore import Keystore, remembers_servers, server_places

    if args.guest:
        return os.environ.get("USER", "")
    if args.keys is not None:
        raise UsageError("with --keys, say whose keys they are: pass --nick")
    found: set[str] = set()
    for key in (None, "by key"):
        if key is not None and (found or not remembers_servers(args.port)):
            break
        for place in server_places(args.host, args.port, _server_key(args) if key else None):
            with contextlib.suppress(OSError):
                found |= {d.name for d in place.iterdir() if Keystore.exists(d)}
    nicks = sorted(found)
    if len(nicks) == 1:
        return nicks[0]
    where = f"{args.host}:{args.port}"
    if not nicks:
        raise UsageError(
            f"no identity for {where} on this machine yet: chat once with "
            "`securechat client --nick NAME` (it makes your keys), or pass --nick"
        )
    raise UsageError(f"several identities for {where} here ({', '.join(nicks)}): pass --nick")


def _attach_json(directory: Path) -> int:
    """`client --json` while another process (a chat client, a bot) holds the keystore:
    JSON mode through it (client/handoff.py), so the ratchet keeps one writer."""
    from ..client.handoff import HandoffRefused, attach

    print("securechat: your keys are in use by a running client: attached to it", file=sys.stderr)
    try:
        return attach(directory, sys.stdin, sys.stdout)
    except HandoffRefused:
        print(f"securechat: {_no_handoff(directory)}", file=sys.stderr)
        return EXIT_FAILED


def _no_handoff(directory: Path) -> str:
    """Why nothing was handed over: who holds the keys, and that it takes no handoff."""
    from ..client.keystore import Keystore, KeystoreBusy

    busy = KeystoreBusy(directory, Keystore.holder(directory))
    return f"{busy} (it takes no handoff: try again when it ends)"


class _KeysBusy(UsageError):
    """The keystore is held by another process (`KeystoreBusy`), said as a usage error
    where nothing can be handed to it; `send` hands its message over instead."""


def run_link(args: argparse.Namespace) -> int:
    """`securechat link`: new keys for this device, paired with NICK's identity device
    over a guest connection; removed again if the linking fails."""
    import secrets

    from ..client.keystore import Keystore
    from ..client.linking import LinkError, link_new_device

    if not is_valid_nick(args.nick):
        raise UsageError("no nick: pass --nick NAME (the identity to link this device to)")
    directory = _keys_dir(args)
    if Keystore.exists(directory):
        raise UsageError(
            f"this machine has keys for {args.nick} already ({directory}): it is one of "
            f"{args.nick}'s devices. To link it anew, move that directory away first"
        )
    try:
        keys = _open_keys(directory, args.nick, args.passphrase)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot make keys in {directory}: {exc}") from None
    guest = argparse.Namespace(**{**vars(args), "nick": "link-" + secrets.token_hex(3), "guest": True})
    client = _client(guest, reconnect=False)
    print(
        f"Linking this device to {args.nick}. In the chat client on the device holding "
        f"{args.nick}'s identity, type /link (if you have not yet).",
        flush=True,
    )

    def show(code: str) -> None:
        print(f"There, type:  /link {code[:3]} {code[3:]}", flush=True)

    def ask(tries_left: int) -> str:
        return input(f"Type the code it shows then ({tries_left} tries): ")

    try:
        devices = link_new_device(client, args.nick, keys, show, ask)
    except (LinkError, EOFError, KeyboardInterrupt) as exc:
        client.close()
        if isinstance(keys.storage, Keystore):
            keys.storage.remove()
        print(f"securechat: not linked: {exc or 'stopped'}", file=sys.stderr)
        return EXIT_FAILED
    client.close()
    print(
        f"Linked: this device ({keys.device}) is one of {args.nick}'s {len(devices)} devices. "
        f"Start chatting with: securechat client --nick {args.nick}",
        flush=True,
    )
    return 0
