"""The hub: who is online, which rooms they are in, and fan-out of room events to them.

What lives here, behind the hub's lock (`Hub._lock`): the online members by nick (and
nicks reserved by a rename under way), the rooms (server/rooms.py's registry:
membership, settings, invitations, bans), each room's recent lines and the lines not yet
written to the store, and pending join/leave notices. What does not: the store (its own
lock, store.py), the relay's per-identity limits (relay.py, prekeylimits.py), the
per-network guards (addresses.py), each session's connection state (session/io.py) and
the server's session table (server.py). Lock order: the hub's lock may be held while
taking a session's or the server's lock (a delivery, the welcome's login count), never
the other way round, and never while calling the store.

A registered room's settings are written to the store before anyone hears of a change
(as a whisper is stored before its `stored` answer): a settings change is checked under
the hub's lock, written by the requester's thread without it, then applied and announced
under it again. `Hub._settings_lock` (taken before the hub's lock and the store's, never
under either) keeps one such change at a time, so what is written is what is applied.

Delivery means handing already-encoded bytes to each member, which never blocks, so
holding the lock while fanning out keeps one order per room: every member sees the
room's events in the same sequence.

Join and leave notices are coalesced: they wait in `_presence` and go out together, one
write per member (all rooms' notices for that member in it), at the next
`flush_presence` (the server calls it a few times a second) or before the next room line,
member list or room change, whichever comes first. A storm of N logins would otherwise
cost N x N separate writes; this way it costs a few writes per member per flush, and the
order users see is unchanged.

A version-1 session (protocol/limits.py, `SUPPORTED_VERSIONS`) is only ever in `#lobby`
and is sent only frames version 1 has: no `entered`, `room_changed`, `invited` or
`renamed` (a rename reaches it as the old nick leaving and the new one joining).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..protocol import (
    DEFAULT_ROOM,
    PROTOCOL_VERSION,
    BanEntry,
    BanList,
    Code,
    Entered,
    Invited,
    Joined,
    Left,
    Message,
    Names,
    RemoteProtocolError,
    Renamed,
    RoomChanged,
    RoomEntry,
    Rooms,
    Say,
    decode_line,
    encode,
    fit_rooms,
    fold_nick,
    fold_room,
)
from .roomnews import BAN, INVITE, RELEASED, NewsKind, RoomNews, SharedState, held_name, held_of
from .rooms import Ban, BanKind, NoSuchRoom, Room, RoomError, Settings, search
from .rooms import Rooms as Registry
from .store import StoredBan, StoredRoom

__all__ = ["Hub", "Member", "NickTaken", "NoSuchRoom", "RoomError", "RoomStore", "TooManyDevices"]

log = logging.getLogger(__name__)


class NickTaken(Exception):
    """Another connected user already holds this nick (compared case-insensitively)."""


class RoomStore(Protocol):
    """Where the hub writes registered rooms (store.py's `Store`). Called on the
    requesting session's thread, without the hub's lock; raises `StoreUnavailable`."""

    def register_room(self, room: StoredRoom, *, drop_history: bool = False) -> bool:
        """Register `room`; False if a room of that name is registered already."""

    def save_room(self, room: StoredRoom) -> None:
        """Replace a registered room's settings, operators and bans."""

    def release_room(self, name: str) -> bool:
        """Forget registered room `name` (its settings and stored lines); False if none."""


class Member(Protocol):
    """What the hub needs from a session."""

    @property
    def away(self) -> str:
        """The away message the member set ("" when here)."""

    def deliver(self, frame: bytes) -> None:
        """Queue one encoded frame for this member without blocking."""


@runtime_checkable
class Staging(Protocol):
    """A member that can coalesce (the server's sessions; see outbox.py): the hub stages
    a broadcast's frame for each member under its lock, and flushes each member that
    asked for it once, after the lock is released."""

    def stage(self, frame: bytes) -> bool:
        """Queue `frame` without sending it, without blocking; True if `flush` is owed."""

    def flush(self) -> None:
        """Send what is staged (one write), without blocking. Called without the hub lock."""


def _nothing() -> None:
    pass


class TooManyDevices(Exception):
    """The identity has `max_devices` sessions online already, each from another device."""


@dataclass
class _Online:
    """A logged-in person: one session, or one per device for an identity logged in from
    several. Guarded by the hub lock (its `nick` changes on a rename, its sessions as
    devices come and go; `rebuild` after every change of `sessions`)."""

    nick: str
    key: bytes  # the identity key it proved; b"" for a guest
    # Device id ("" for a client that names none) -> (session, its hello's version).
    sessions: dict[str, tuple[Member, int]]
    # What the hub sends the person: its one session, or `_Devices` over all of them.
    member: Member = dataclasses.field(init=False)
    # The lowest protocol version of its sessions (what every frame sent to it must fit).
    version: int = dataclasses.field(init=False)
    # The member's `stage` and `flush`, looked up once per change (the fan-out calls them
    # for every recipient of every line). A member that cannot stage is delivered to at
    # once and owes no flush.
    stage: Callable[[bytes], bool] = dataclasses.field(init=False, repr=False)
    flush: Callable[[], None] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rebuild()

    def rebuild(self) -> None:
        """Recompute `member`, `version`, `stage` and `flush` from `sessions`; the caller
        bumps the hub's `_members_generation` (cached fan-outs hold the old ones)."""
        if len(self.sessions) == 1:
            ((self.member, self.version),) = self.sessions.values()
        else:
            self.member = _Devices(tuple(m for m, _ in self.sessions.values()))
            self.version = min(v for _, v in self.sessions.values())
        if isinstance(self.member, Staging):
            self.stage, self.flush = self.member.stage, self.member.flush
        else:
            self.stage, self.flush = _delivering(self.member), _nothing

    def device_of(self, member: Member) -> str | None:
        """The device id `member` is logged in as, None if it is not one of the sessions."""
        return next((d for d, (m, _) in self.sessions.items() if m is member), None)

    def any_session(self) -> Member:
        """One of its sessions (they share the nick and the key)."""
        return next(iter(self.sessions.values()))[0]


class _Devices:
    """Several sessions of one identity, one per device, as one member: each frame the hub
    sends the person goes to every session. Immutable: a change of devices builds a new
    one, so `flush`, called without the hub's lock, reads a stable tuple."""

    def __init__(self, sessions: tuple[Member, ...]) -> None:
        self._sessions = sessions
        self._stages = tuple(s.stage if isinstance(s, Staging) else _delivering(s) for s in sessions)
        self._flushes = tuple(s.flush for s in sessions if isinstance(s, Staging))

    @property
    def away(self) -> str:
        return next((s.away for s in self._sessions if s.away), "")

    def deliver(self, frame: bytes) -> None:
        for session in self._sessions:
            session.deliver(frame)

    def stage(self, frame: bytes) -> bool:
        owed = False
        for stage in self._stages:
            owed = bool(stage(frame)) or owed
        return owed

    def flush(self) -> None:
        # Flushing a session that owed nothing sends what it has staged a little early:
        # harmless, and cheaper than tracking which of them owed it.
        for flush in self._flushes:
            flush()


def _delivering(member: Member) -> Callable[[bytes], bool]:
    def stage(frame: bytes) -> bool:
        member.deliver(frame)
        return False

    return stage


class Hub:
    """The registry of online members and rooms, and each room's fan-out.

    Contract: every method is thread-safe (any thread: session readers, the watchdog)
    and returns without socket I/O; the only store calls are a registered room's
    settings changes, made on the caller's thread (a session's reader) without the lock.
    `join`'s `on_joined` callback runs under the hub lock, before anyone else can see the
    new member, so a welcome frame it queues precedes every room event. Room requests
    raise `RoomError` (with the wire code) before changing anything.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        history: int = 0,
        rooms: Registry | None = None,
        store: RoomStore | None = None,
        max_devices: int = 5,
        publish_lines: Callable[[str, bytes], None] | None = None,
        publish_presence: Callable[[str, str, bool, bytes, bytes], None] | None = None,
        publish_news: Callable[[str, bytes, bool], None] | None = None,
    ) -> None:
        """`rooms` is the registry with the server's autojoin rooms and caps (default:
        `#lobby` only); `history` the lines kept per room; `store` where registered rooms
        are written (None: kept in memory only); `max_devices` the sessions one identity
        may have online at once, one per device. `publish_lines` (a cluster node: the
        backplane's) takes each room's batch of lines instead of the local fan-out: the
        batch comes back, in the room's order across every node, to `deliver_lines`.
        `publish_presence(room, nick, joined, frame, key)` (the same) tells the other nodes
        a member of this one (holding identity `key`) entered (`joined`) or left a room;
        theirs come back to
        `deliver_lines` too, and make them members this node shows (`names`, `entered`).
        `publish_news(room, news, keep)` (the same) sends roomnews.py's news of a room in
        its order (`keep`: Redis keeps it as the room's latest state, for nodes that
        start later); every node's, this one's too, come back to `room_news`."""
        self._clock = clock
        # Set once here; called under `_lock` (they only queue, never block).
        self._publish_lines = publish_lines
        self._publish_presence = publish_presence
        self._publish_news = publish_news
        # A cluster node's view of the members other nodes serve: folded room -> folded
        # nick -> node -> (nick as shown, identity key or b"") (a person may be on
        # several nodes: their devices). Guarded by `_lock`.
        self._remote: dict[str, dict[str, dict[str, tuple[str, bytes]]]] = {}
        # A cluster node's copy of the shared state (roomnews.py) of rooms other nodes
        # have members of and this one has none: what a room made here for a newcomer
        # starts from. Guarded by `_lock`.
        self._shared: dict[str, SharedState] = {}
        # A cluster node's state news per folded room published and not yet back from
        # the backplane: while some are, the other nodes' news of the room is not
        # applied (this node's comes later in the room's order, and wins). Guarded by
        # `_lock`.
        self._unconfirmed: dict[str, int] = {}
        self._max_devices = max_devices
        self._store = store
        # One registered room's settings change at a time, across its store write (see
        # the module docstring). Taken before `_lock`; held by a session's reader thread.
        self._settings_lock = threading.Lock()
        self._lock = threading.Lock()
        # Everything below: guarded by `_lock`.
        self._rooms = rooms if rooms is not None else Registry(autojoin=(DEFAULT_ROOM,))
        self._members: dict[str, _Online] = {}  # folded nick -> online member
        # Nicks a rename is taking (folded): nobody may log in or rename to them meanwhile.
        self._reserved: set[str] = set()
        self._keep = history
        self._history: dict[str, deque[Message]] = {}  # folded room -> its newest lines
        # Lines said in autojoin and registered rooms but not yet written to the store. A
        # line leaves only once `saved` confirms the write, so a failed write (disk full)
        # loses nothing. Bounded per room like the history: a line pushed out of the
        # newest `history` lines is one the store would delete on the next write anyway.
        self._unsaved: dict[str, deque[Message]] = {}  # folded room -> lines
        self._unsaved_dropped = 0  # lines dropped that way since the last `saved`
        self._presence: dict[str, list[bytes]] = {}  # folded room -> notices not yet sent
        # Members who entered a room while its notices were pending: folded room ->
        # id(member) -> index of the first notice they get (what they were sent on
        # entering already covered the earlier ones and their own).
        self._newcomers: dict[str, dict[int, int]] = {}
        self._last_ts = 0.0
        # Whom a room line is staged for, per room, kept while neither the room's members
        # (`Room.generation`) nor the online members (`_members_generation`, bumped at
        # every change of `_members`) changed: the fan-out then calls each member's
        # `stage` without a lookup per member.
        self._fanouts: dict[str, _Fanout] = {}  # folded room -> its members' stage/flush
        self._members_generation = 0
        # Lines waiting to be fanned out by whoever next holds `_lock` (`say_many`):
        # appended by any thread without the lock (a deque's append is atomic), taken
        # only under it.
        self._said: deque[_Said] = deque()
        # The online members (folded nicks) whose away message is set, as each member's
        # `away` says at login and its session tells `set_away` after every change.
        # Guarded by `_lock`.
        self._away_nicks: set[str] = set()
        # Flushes owed by frames the hot paths staged (room lines, presence), made after
        # the lock is released by `_flush_owed`. Guarded by `_lock` (`_flush_owed` reads
        # its truth bare, see there).
        self._owed: list[Callable[[], None]] = []
        # Held by the one thread making the owed flushes; only ever acquired without
        # blocking, and nothing is taken under it but the hub's lock (briefly, to take
        # the owed list) and the members' outbox locks (the flushes).
        self._flushing = threading.Lock()

    def serves_version_1(self) -> bool:
        """True if `#lobby` is an autojoin room (else a version-1 hello is refused)."""
        return any(fold_room(r) == fold_room(DEFAULT_ROOM) for r in self._rooms.autojoin)

    # -- logging in and out --------------------------------------------------------

    def join(
        self,
        member: Member,
        nick: str,
        on_joined: Callable[[str, tuple[str, ...]], None],
        *,
        may_replace: Callable[[Member], bool] | None = None,
        key: bytes = b"",
        version: int = PROTOCOL_VERSION,
        device: str = "",
    ) -> Member | None:
        """Log `member` in as `nick` (holding identity `key`), put it in the autojoin rooms
        (`#lobby` only for `version` 1), call `on_joined(welcome room, its users)`, then
        send it `entered` and history for each room (history alone for version 1), and
        announce it to the others. The welcome room is the first autojoin room it is in
        (for `version` 1, `#lobby`); in none (no autojoin rooms, or all of them refused
        it), `on_joined` gets no users and names `#lobby` as the welcome always has.

        If the nick is held and `may_replace(holder)` says so (the same user proved the
        same key again): from the same `device` (or with only that device online), the
        holder's session of that device is displaced silently and returned: the caller
        must close it, and the newcomer takes over its rooms; from another device, the
        newcomer joins the person beside its other sessions (`_join_device`), or
        `TooManyDevices` is raised if `max_devices` are online. Raises `NickTaken` if
        `may_replace` says no (or a rename is taking the nick). An autojoin room that
        refuses the newcomer (a ban, invite-only) is skipped; but `#lobby` refusing a
        `version` 1 session (which could be in no other room) raises that `RoomError`,
        nothing changed.
        """
        folded = fold_nick(nick)
        with self._lock:
            holder = self._members.get(folded)
            if folded in self._reserved or (
                holder is not None and (may_replace is None or not may_replace(holder.any_session()))
            ):
                raise NickTaken(nick)
            if holder is not None and (len(holder.sessions) > 1 or device not in holder.sessions):
                return self._join_device(holder, member, device, version, on_joined)
            now = self._clock()
            if version == 1:
                self._rooms.check_autojoin(DEFAULT_ROOM, nick, key, now)
            self._members[folded] = _Online(nick, key, {device: (member, version)})
            self._members_generation += 1
            # Its away as it stands at login (a client may say `away` before logging in);
            # a displaced holder's does not carry over, as its `away` never did.
            if member.away:
                self._away_nicks.add(folded)
            else:
                self._away_nicks.discard(folded)
            entered: list[Room] = []
            if holder is not None:  # the same user again: nothing to announce
                self._rooms.rename(holder.nick, nick)  # the spelling may differ
                for room in self._rooms.rooms_of(nick):
                    newcomers = self._newcomers.get(fold_room(room.name), {})
                    newcomers.pop(id(holder.member), None)
                    if version == 1 and fold_room(room.name) != fold_room(DEFAULT_ROOM):
                        self._rooms.part(room.name, nick)
                        self._after_leaving(room, Left(room=room.name, nick=nick, reason="logged in again"))
                    else:
                        entered.append(room)
                        self._newcomers.setdefault(fold_room(room.name), {})[id(member)] = len(
                            self._presence.get(fold_room(room.name), ())
                        )
            autojoin = (DEFAULT_ROOM,) if version == 1 else self._rooms.autojoin
            for name in autojoin:
                try:
                    room, already = self._enter_locked(name, nick, key, now, member, autojoin=True)
                except RoomError:
                    continue
                if not already:
                    entered.append(room)
            welcome = next(
                (r for r in map(self._rooms.get, autojoin) if r is not None and fold_nick(nick) in r.members),
                None,
            )
            on_joined(
                welcome.name if welcome is not None else DEFAULT_ROOM,
                self._users(welcome) if welcome is not None else (),
            )
            for room in sorted(entered, key=lambda r: _order(r, autojoin)):
                self._send_entry(room, member, version)
        return None if holder is None else holder.any_session()

    def _join_device(
        self,
        person: _Online,
        member: Member,
        device: str,
        version: int,
        on_joined: Callable[[str, tuple[str, ...]], None],
    ) -> Member | None:
        """`join` for a person already online from another device: `member` becomes the
        session of `device` (displacing and returning that device's stale session, if
        any), is welcomed and sent each of the person's rooms; nothing is announced (the
        person was there already). Under the hub's lock."""
        stale = person.sessions.get(device)
        if stale is None and len(person.sessions) >= self._max_devices:
            raise TooManyDevices(person.nick)
        # Notices pending now went out before this session's rooms are listed to it, so
        # it is sent only what follows its `entered`.
        self._flush_presence_locked()
        person.sessions[device] = (member, version)
        person.rebuild()
        self._members_generation += 1
        if member.away:
            self._away_nicks.add(fold_nick(person.nick))
        autojoin = self._rooms.autojoin
        rooms = sorted(self._rooms.rooms_of(person.nick), key=lambda r: _order(r, autojoin))
        welcome = next((r for r in rooms if fold_room(r.name) in map(fold_room, autojoin)), None)
        on_joined(
            welcome.name if welcome is not None else DEFAULT_ROOM,
            self._users(welcome) if welcome is not None else (),
        )
        for room in rooms:
            self._send_entry(room, member, version)
        return None if stale is None else stale[0]

    def leave(self, member: Member, nick: str, reason: str = "") -> None:
        """Take `member` out of every room, if it holds `nick`, and announce it; if the
        person is online from other devices too, only forget this session (nothing is
        announced). A no-op if `member` is not one of its sessions (a displaced session
        leaving after its successor came)."""
        folded = fold_nick(nick)
        with self._lock:
            entry = self._members.get(folded)
            device = None if entry is None else entry.device_of(member)
            if entry is None or device is None:
                return
            if len(entry.sessions) > 1:  # its other devices stay: nothing to announce
                del entry.sessions[device]
                entry.rebuild()
                self._members_generation += 1
                return
            del self._members[folded]
            self._members_generation += 1
            self._away_nicks.discard(folded)
            if not entry.key:
                self._guest_gone_locked(nick)
            for room in self._rooms.quit(nick):
                self._newcomers.get(fold_room(room.name), {}).pop(id(member), None)
                self._notice(room, Left(room=room.name, nick=entry.nick, reason=reason))
                self._forget_if_vanished(room)

    def reserve(self, old: str, new: str) -> None:
        """Hold `new` for `old`'s rename while the store moves its registration: nobody
        may log in or rename to it until `rename` or `unreserve`. Raises `NickTaken` if
        someone else online holds it or a rename is taking it, `RoomError` (banned) if a
        room `old` is in bans `new` (nothing reserved then)."""
        with self._lock:
            holder = self._members.get(fold_nick(new))
            renamer = self._members.get(fold_nick(old))
            if fold_nick(new) in self._reserved or (holder is not None and holder is not renamer):
                raise NickTaken(new)
            if renamer is not None and len(renamer.sessions) > 1:
                # Each session keeps the nick it logged in with: renaming one would leave
                # the others speaking for a nick that no longer exists.
                raise RoomError(
                    Code.UNEXPECTED, "you are logged in from other devices: log them out before renaming"
                )
            if renamer is not None:
                self._rooms.check_rename(old, new, renamer.key)
            self._reserved.add(fold_nick(new))

    def unreserve(self, new: str) -> None:
        """The rename to `new` was refused: the nick is free again."""
        with self._lock:
            self._reserved.discard(fold_nick(new))

    def set_away(self, nick: str, message: str) -> None:
        """`nick` (online) set its away message to `message` ("" when back). Called by
        its session's reader after every change, so that a room's away list (in every
        `entered` and `names`) comes from a set kept up to date instead of asking each
        member. A nick not online is ignored (its session's `away` is read again at
        login)."""
        folded = fold_nick(nick)
        with self._lock:
            if folded not in self._members:
                return
            if message:
                self._away_nicks.add(folded)
            else:
                self._away_nicks.discard(folded)

    def rename(self, old: str, new: str) -> None:
        """`old` (online) is now `new` (which it `reserve`d): same rooms, same standing.
        Everyone sharing a room with them, and they, get `renamed` once (version-1
        members: `left` and `joined` in `#lobby`). A room whose bans cover `new` by now
        (set since `reserve` checked) puts them out then, as that ban would have."""
        with self._lock:
            self._reserved.discard(fold_nick(new))
            entry = self._members.get(fold_nick(old))
            if entry is None:
                return
            self._flush_presence_locked()
            old_shown = entry.nick
            del self._members[fold_nick(old)]
            entry.nick = new
            self._members[fold_nick(new)] = entry
            self._members_generation += 1
            if fold_nick(old) in self._away_nicks:
                self._away_nicks.discard(fold_nick(old))
                self._away_nicks.add(fold_nick(new))
            if not entry.key and fold_nick(old) != fold_nick(new):
                self._guest_gone_locked(old)  # as `rename` would, and told
            rooms = self._rooms.rename(old, new)
            renamed = encode(Renamed(old=old_shown, new=new))
            told: set[int] = {id(entry)}
            entry.member.deliver(renamed)
            for room in rooms:
                v1_frames = encode(
                    Left(room=room.name, nick=old_shown, reason=f"now known as {new}")
                ) + encode(Joined(room=room.name, nick=new))
                for folded in room.members:
                    other = self._members[folded]
                    if id(other) in told:
                        continue
                    told.add(id(other))
                    other.member.deliver(v1_frames if other.version == 1 else renamed)
                # Other nodes of a cluster see the rename as the old nick leaving and
                # the new one entering, in the room's order.
                self._tell_cluster(room, Left(room=room.name, nick=old_shown, reason=f"now known as {new}"))
                self._tell_cluster(room, Joined(room=room.name, nick=new))
            # `reserve` checked the bans, but the store moved the registration since,
            # without the lock: a ban set meanwhile is enforced now.
            for room in rooms:
                ban = Registry.ban_on(room, fold_nick(new), entry.key)
                if ban is not None:
                    self._rooms.part(room.name, new)
                    self._put_out(room, new, by=ban.by, reason="banned")

    # -- room membership -------------------------------------------------------------

    def enter(self, nick: str, name: str) -> None:
        """`nick` joins room `name` (creating it): it gets `entered` and the history; the
        others a `joined` notice. Already in: `entered` again alone (it has had the
        history: a loop of joins must not make the server send it again and again),
        nothing announced."""
        with self._lock:
            entry = self._online(nick)
            room, already = self._enter_locked(name, entry.nick, entry.key, self._clock(), entry.member)
            self._send_entry(room, entry.member, entry.version, history=not already)

    def _enter_locked(
        self, name: str, nick: str, key: bytes, now: float, member: Member, *, autojoin: bool = False
    ) -> tuple[Room, bool]:
        """`Rooms.join` (under the lock), and the newcomer announced if it was not in the
        room. A cluster node makes a room that other nodes have members of from its
        shared state there, and tells the others (after the newcomer, so that they
        know the room has a member) of a room made here and of an invitation used."""
        if self._publish_news is None:
            room, already = self._rooms.join(name, nick, key, now, autojoin=autojoin)
            if not already:
                self._announce_entry(room, nick, member)
            return room, already
        folded = fold_room(name)
        existing = self._rooms.get(name)
        state = None
        if existing is None and self._remote.get(folded):
            state = self._shared.get(folded)
            if state is None:  # its state is on the way (a subscription made again)
                raise RoomError(Code.BUSY, f"{name} is being set up on this server: try again in a moment")
        held = key or fold_nick(nick)  # the invitation it would use
        if existing is not None:
            invited = held in existing.invites
        else:
            invited = state is not None and any(h == held for h, _ in state.invites)
        room, already = self._rooms.join(
            name, nick, key, now, autojoin=autojoin, seed=None if state is None else state.apply
        )
        if not already:
            self._announce_entry(room, nick, member)
            if existing is None and state is None:
                self._share_locked(room)  # made here
            if state is not None:
                self._shared.pop(folded, None)  # the room here holds it from now on
                self._rooms.index_guest_invites(room)
            if invited and held not in room.invites:
                self._uninvite_locked(room.name, held)
        return room, already

    def part(self, nick: str, name: str, reason: str = "") -> None:
        """`nick` leaves room `name`; every member, the leaver included, gets `left`."""
        with self._lock:
            entry = self._online(nick)
            room = self._rooms.part(name, nick)
            self._flush_presence_locked()
            left = Left(room=room.name, nick=entry.nick, reason=reason)
            self._newcomers.get(fold_room(room.name), {}).pop(id(entry.member), None)
            entry.member.deliver(encode(left))
            self._after_leaving(room, left)

    def kick(
        self, nick: str, name: str, target: str, reason: str = "", remote_key: bytes | None = None
    ) -> None:
        """An operator's kick: everyone in the room, the kicked member too, gets `left`
        with `by`. `remote_key` (a cluster node): the identity key (b"" a guest) of
        `target` if another node serves it; a member of the room there is put out by
        that node, which announces it."""
        with self._lock:
            entry = self._online(nick)
            found = self._rooms.get(name)
            if (
                self._publish_news is not None
                and found is not None
                and remote_key is not None
                and fold_nick(target) not in found.members
                and self._elsewhere(found, target)
            ):
                room = self._rooms.check_kick(name, nick, target, remote_key)
                news = RoomNews(NewsKind.KICK, by=entry.nick, target=target, reason=reason)
                self._publish_news(fold_room(room.name), news.encode(), False)
                return
            room, shown = self._rooms.kick(name, nick, target)
            self._put_out(room, shown, by=entry.nick, reason=reason)
            if self._publish_news is not None and self._elsewhere(room, target):
                # The same person in the room through another node (their devices).
                news = RoomNews(NewsKind.KICK, by=entry.nick, target=target, reason=reason)
                self._publish_news(fold_room(room.name), news.encode(), False)

    def ban(self, nick: str, name: str, mask: str, mask_key: bytes | None) -> None:
        """An operator's ban (rooms.py says how `mask` is read; `mask_key` is the identity
        key `mask` is registered to, if any). Members it covers are put out as kicked,
        reason "banned"."""

        def put_out(room: Room) -> None:
            banner = self._online(nick).nick
            for shown in self._rooms.put_out_banned(room):
                self._put_out(room, shown, by=banner, reason="banned")
            self._share_locked(room, what=BAN, by=banner)  # the other nodes put out theirs

        self._settle(nick, name, lambda: self._rooms.add_ban(name, nick, mask, mask_key), put_out)

    def unban(self, nick: str, name: str, mask: str) -> None:
        self._settle(nick, name, lambda: self._rooms.unban(name, nick, mask), self._share_locked)

    def ban_list(self, nick: str, name: str) -> BanList:
        with self._lock:
            room, bans = self._rooms.ban_list(name, nick)
            return BanList(
                room=room.name, bans=tuple(BanEntry(mask=b.shown, kind=b.kind.value, by=b.by) for b in bans)
            )

    def invite(self, nick: str, name: str, invitee: str, remote_key: bytes | None = None) -> None:
        """`nick` invites `invitee` (who must be online): both get `invited`.
        `remote_key` (a cluster node): the identity key (b"" a guest) of `invitee` if
        another node serves it; that node tells them."""
        with self._lock:
            entry = self._online(nick)
            guest = self._members.get(fold_nick(invitee))
            if guest is None and remote_key is None:
                raise RoomError(Code.NO_SUCH_USER, f"{invitee} is not online")
            shown, key = (invitee, remote_key) if guest is None else (guest.nick, guest.key)
            assert key is not None
            room = self._rooms.invite(name, nick, shown, key, self._clock())
            frame = encode(Invited(room=room.name, nick=shown, by=entry.nick))
            entry.member.deliver(frame)
            if guest is not None and guest is not entry and guest.version > 1:
                guest.member.deliver(frame)
            self._share_locked(room, what=INVITE, by=entry.nick, target=shown)

    # -- room settings ---------------------------------------------------------------

    # Each is a `_settle`: a registered room's change is in the store before it is told.

    def set_topic(self, nick: str, name: str, topic: str) -> None:
        self._settle(nick, name, lambda: self._rooms.set_topic(name, nick, topic), self._told(nick, "topic"))

    def set_invite_only(self, nick: str, name: str, invite_only: bool) -> None:
        self._settle(
            nick,
            name,
            lambda: self._rooms.set_invite_only(name, nick, invite_only),
            self._told(nick, "invite_only"),
        )

    def register_room(self, nick: str, name: str, charge: Callable[[], str] = lambda: "") -> None:
        """Register room `name` to `nick`'s key: in the store (with any lines it held
        for an older room of that name dropped) before anyone is told; its lines are
        stored from then on, the recent ones with the next history write. `charge` takes
        the registration's cost (one of the network's registrations) and returns "" or
        why it cannot (refused, quota-exceeded); it is called under the hub's lock, only
        once the registration is in the store and nothing else refuses it, so one that
        fails costs nothing (`_settle`)."""

        def registered(room: Room) -> None:
            if not room.permanent:  # an autojoin room's lines are stored already
                self._unsaved[fold_room(room.name)] = deque(
                    self._history.get(fold_room(room.name), ()), self._keep
                )
            self._changed(room, nick, "registered")

        if self._store is None:  # nothing to write: charged as the registry checks it
            self._settle(nick, name, lambda: self._rooms.register(name, nick, charge), registered)
        else:
            self._settle(nick, name, lambda: self._rooms.register(name, nick), registered, charge)

    def op(self, nick: str, name: str, target: str, target_key: bytes | None) -> None:
        self._settle(
            nick, name, lambda: self._rooms.op(name, nick, target, target_key), self._told(nick, "operators")
        )

    def deop(self, nick: str, name: str, target: str, target_key: bytes | None) -> None:
        self._settle(
            nick,
            name,
            lambda: self._rooms.deop(name, nick, target, target_key),
            self._told(nick, "operators"),
        )

    def transfer(self, nick: str, name: str, target: str, target_key: bytes | None) -> None:
        self._settle(
            nick,
            name,
            lambda: self._rooms.transfer(name, nick, target, target_key),
            self._told(nick, "owner"),
        )

    def _told(self, nick: str, what: str) -> Callable[[Room], None]:
        return lambda room: self._changed(room, nick, what)

    def _settle(
        self,
        nick: str,
        name: str,
        change: Callable[[], Room],
        done: Callable[[Room], None],
        charge: Callable[[], str] = lambda: "",
    ) -> None:
        """Make a settings change of room `name` and call `done(room)` (the announcement)
        under the lock. `change` is a registry call that checks the request (raising
        `RoomError`, nothing changed) and changes only the room's settings.

        For a registered room (or one being registered) the new settings are written to
        the store first, on this thread without the hub's lock; meanwhile the room keeps
        its old ones, and nothing is told. `StoreUnavailable` leaves everything as it was.
        A registration's `charge` (see `register_room`) is taken only once it is in the
        store and about to be applied; a refusal then undoes it in the store.
        """
        with self._settings_lock:
            with self._lock:
                self._online(nick)
                room = self._rooms.room(name)
                before = room.settings
                change()
                after = room.settings
                if self._store is None or not after.owner:
                    done(room)  # nothing to store: an unregistered room, or no store
                    return
                # Tried under the lock, where nobody saw it: the room keeps its old
                # settings until they are durable.
                room.restore(before)
            stored = _stored(room.name, after)
            if before.owner:
                try:
                    self._store.save_room(stored)
                except KeyError:  # released by `securechat release-room` while running
                    raise RoomError(
                        Code.NO_SUCH_ROOM, f"{room.name} is no longer registered; nothing was changed"
                    ) from None
            elif not self._store.register_room(stored, drop_history=not room.permanent):
                raise RoomError(Code.ROOM_REGISTERED, f"{room.name} is already registered")
            with self._lock:
                replaced = self._rooms.vanished(room) and self._rooms.get(room.name) is not None
                # Charged only now: a failed write, a refusal by the store or a replaced
                # room costs the network nothing (there is no giving a token back).
                refusal = "" if replaced or before.owner else charge()
                if not replaced and not refusal and self._rooms.vanished(room):
                    # Emptied meanwhile (its creator displaced by a version-1 login of
                    # the same key): it is registered now, so it exists.
                    room = self._rooms.load(
                        room.name,
                        owner=after.owner,
                        topic=after.topic,
                        invite_only=after.invite_only,
                        operators=after.operators,
                        bans=after.bans,
                    )
                if not replaced and not refusal:
                    room.restore(after)
                    if fold_nick(nick) in self._members:
                        done(room)
                    else:  # gone meanwhile: nothing to announce, but the other nodes are told
                        self._share_locked(room)
                    return
            # Refused by the network's budget, or emptied and made again by someone else
            # meanwhile (the registration was of a room that is gone, and must not take
            # over, or orphan the members of, the new one). Undone in the store; a failure
            # there leaves it to `release-room`.
            if not before.owner:
                self._store.release_room(room.name)
            if refusal:
                raise RoomError(Code.QUOTA, refusal)
            raise RoomError(Code.NOT_IN_ROOM, f"you are not in {room.name}")

    def release_idle_rooms(self, expire: Callable[[frozenset[bytes]], list[str]]) -> list[str]:
        """Release the registered rooms `expire(keys online now)` releases in the store
        (the store's `expire_rooms`: owners away too long): from then on they are ordinary
        rooms, vanishing when empty. Their names. Called by the watchdog thread; `expire`
        runs without the hub's lock, while no settings change is under way."""
        with self._settings_lock:
            with self._lock:
                online = frozenset(entry.key for entry in self._members.values() if entry.key)
            released = expire(online)
            with self._lock:
                for name in released:
                    room = self._rooms.release(name)
                    if room is not None:
                        self._share_locked(room, what=RELEASED)
                        self._forget_if_vanished(room)
                        if not self._persisted(room):
                            self._unsaved.pop(fold_room(room.name), None)
        return released

    # -- reading ---------------------------------------------------------------------

    def list_rooms(self, pattern: str) -> Rooms:
        """The `rooms` answer to a `list`."""
        with self._lock:
            rooms = self._rooms.summaries()
        # Matched outside the lock: whatever a pattern costs, it holds up no one else.
        found, truncated = search(rooms, pattern)
        answer = fit_rooms(pattern, (RoomEntry(room=r.name, users=r.users, topic=r.topic) for r in found))
        return dataclasses.replace(answer, truncated=answer.truncated or truncated)

    def names(self, nick: str, room: str) -> Names:
        """The `names` event for `room`, for `nick`, a member of it. Raises `NoSuchRoom`,
        or `RoomError` (not-in-room): who is in an invite-only room is its members' to see."""
        with self._lock:
            found = self._rooms.room(room)
            if fold_nick(nick) not in found.members:
                raise RoomError(Code.NOT_IN_ROOM, f"you are not in {found.name}")
            self._flush_presence_locked()  # so no notice arrives after the list it is part of
            users = self._users(found)
            return Names(
                room=found.name,
                users=users,
                away=self._away(found),
                owner=self._owner_nick(found),
                operators=self._operator_nicks(found),
            )

    def is_in(self, nick: str, room: str) -> bool:
        """True if `nick` is in `room` now."""
        with self._lock:
            found = self._rooms.get(room)
            return found is not None and fold_nick(nick) in found.members

    def online(self) -> tuple[str, ...]:
        """The nicks of everyone logged in, in any room or none."""
        with self._lock:
            return tuple(entry.nick for entry in self._members.values())

    def member(self, nick: str) -> Member | None:
        """The member holding `nick` (case-insensitively), or None."""
        with self._lock:
            entry = self._members.get(fold_nick(nick))
        return None if entry is None else entry.member

    def member_of(self, nick: str, device: str) -> Member | None:
        """The session of `nick`'s device `device` ("" the one holding the identity key,
        or a session that named none), or None if that device is not online."""
        with self._lock:
            entry = self._members.get(fold_nick(nick))
            found = None if entry is None else entry.sessions.get(device)
        return None if found is None else found[0]

    def protocol_version(self, nick: str) -> int | None:
        """The protocol version of the session holding `nick` (its hello's), or None."""
        with self._lock:
            entry = self._members.get(fold_nick(nick))
        return None if entry is None else entry.version

    def display_nick(self, nick: str) -> str | None:
        """`nick` as its holder spelled it when joining, or None if not here."""
        with self._lock:
            entry = self._members.get(fold_nick(nick))
        return None if entry is None else entry.nick

    def __len__(self) -> int:
        with self._lock:
            return len(self._members)

    # -- room lines ------------------------------------------------------------------

    def say(self, nick: str, room: str, text: str, *, action: bool = False) -> None:
        """Broadcast a public message from `nick` to everyone in `room`, sender included.

        Raises `NoSuchRoom` for an unknown room, `RoomError` (not-in-room) if `nick` is
        not in it. The sender gets its own message back so that its screen shows the
        order everyone else sees.
        """
        self.say_many(nick, [Say(room=room, text=text, action=action)])

    def say_many(self, nick: str, says: Sequence[Say]) -> None:
        """Broadcast `says` from `nick`, in order: per room, one write per member.

        Lines a client sent together go out together: one fan-out instead of one per
        line. Raises `NoSuchRoom` or `RoomError` (not-in-room), before any of them is
        sent, if one names a room that does not exist or that `nick` is not in.

        Lines that other sessions said meanwhile go out with them (flat combining): each
        caller leaves its lines in `_said` before it waits for the hub's lock, and
        whoever holds it fans out everything left there, per room one frame for all of
        them (one `stage` per member, not one per line per member). A caller whose lines
        went out that way finds them done once it has the lock, and only returns. The
        order of a room is the order lines were left in, the same for every member.
        """
        said = _Said(nick, says)
        self._said.append(said)
        try:
            with self._lock:
                if not said.done:
                    self._say_all_locked(self._owed)
        finally:
            self._flush_owed()
        if said.error is not None:
            raise said.error

    def _say_all_locked(self, flushes: list[Callable[[], None]]) -> None:
        """Fan out every batch of lines waiting in `_said` (see `say_many`), marking each
        done, with the error its caller must raise if it was refused."""
        batches: list[_Said] = []
        try:
            while self._said:  # others may append meanwhile: their own call does those
                batches.append(self._said.popleft())
            by_room: dict[str, tuple[Room, list[Message]]] = {}
            for said in batches:
                try:
                    rooms = self._rooms_said_locked(said)
                except RoomError as exc:
                    said.error, said.done = exc, True
                    continue
                if not by_room:
                    self._flush_presence_locked(flushes)  # notices before the lines
                for say in said.says:
                    room = rooms[fold_room(say.room)]
                    line = Message(
                        room=room.name,
                        nick=said.nick,
                        text=say.text,
                        ts=self._next_ts_locked(),
                        action=say.action,
                    )
                    by_room.setdefault(fold_room(room.name), (room, []))[1].append(line)
                said.done = True
            for folded, (room, messages) in by_room.items():
                batch = b"".join(encode(m) for m in messages)
                if self._publish_lines is not None:
                    # A cluster's order is the backplane's: fanned out and kept as
                    # history when it comes back (`deliver_lines`), on every node alike.
                    self._publish_lines(folded, batch)
                else:
                    self._fan_out_locked(room, batch, flushes)
                if self._keep:
                    if self._publish_lines is None:
                        self._history.setdefault(folded, deque(maxlen=self._keep)).extend(messages)
                    # Only the node where they were said writes them to the store.
                    unsaved = self._unsaved.get(folded)
                    if unsaved is None and self._persisted(room):
                        unsaved = self._unsaved[folded] = deque(maxlen=self._keep)
                    if unsaved is not None:
                        self._unsaved_dropped += max(0, len(unsaved) + len(messages) - self._keep)
                        unsaved.extend(messages)
        except Exception as exc:
            # Whatever failed, no caller may return as if its lines went out.
            for said in batches:
                if said.error is None:
                    said.error, said.done = exc, True
            raise

    def _rooms_said_locked(self, said: _Said) -> dict[str, Room]:
        """The rooms `said`'s lines go to, by folded name; raises `NoSuchRoom` or
        `RoomError` (not-in-room) if one does not exist or its sender is not in it."""
        rooms: dict[str, Room] = {}
        folded_nick = fold_nick(said.nick)
        for say in said.says:
            found = self._rooms.room(say.room)
            if folded_nick not in found.members:
                raise RoomError(Code.NOT_IN_ROOM, f"you are not in {found.name}")
            rooms[fold_room(say.room)] = found
        return rooms

    def _next_ts_locked(self) -> float:
        # Strictly increasing: clients skip history lines whose ts is not newer than the
        # last line they saw, so two lines must never share one (a float at today's
        # epoch resolves only ~0.24 us, and lines of one batch are stamped together).
        # This also covers the wall clock jumping back: new lines are stamped just after
        # the newest line (seeded from the stored history at start), never older, until
        # the clock catches up.
        self._last_ts = max(self._clock(), self._last_ts + 1e-6)
        return self._last_ts

    def deliver_lines(self, room: str, segments: Sequence[tuple[bytes, str, bool, bytes]]) -> None:
        """A cluster node: consecutive batches of folded `room`'s frames in the room's
        order, each (frames, the node that published it, whether this node did, the
        identity key the member a `joined` announces holds), from the backplane's
        subscriber thread. Lines are fanned out to this node's members of the room (all
        the batches in one write per member) and kept as its history; another node's
        `joined`/`left` make its member one this node shows and are fanned out too (this
        node's own were sent already, by its presence flush)."""
        try:
            with self._lock:
                out: list[bytes] = []
                lines: list[Message] = []
                for batch, origin, mine, key in segments:
                    for raw in batch.split(b"\n"):
                        if not raw:
                            continue
                        try:
                            event = decode_line(raw)
                        except RemoteProtocolError:  # one bad frame (a newer node's?) costs only itself
                            log.warning(
                                "cluster: a frame of %s from node %s could not be read; skipped", room, origin
                            )
                            continue
                        if isinstance(event, Message):
                            lines.append(event)
                        elif isinstance(event, (Joined, Left)) and (
                            mine or not self._remote_presence_locked(room, event, origin, key)
                        ):
                            continue  # ours went out already; one that changes nothing is no news
                        out.append(raw + b"\n")
                found = self._rooms.get(room)
                if found is not None and out:
                    self._flush_presence_locked(self._owed)  # notices before the lines
                    self._fan_out_locked(found, b"".join(out), self._owed)
                # History of the rooms that exist: this node's, and those other nodes
                # have members of (a newcomer here is shown it, as on a single server).
                # A room gone everywhere takes its history with it (`_gone_locked`).
                if self._keep and lines and (found is not None or self._remote.get(room)):
                    self._history.setdefault(room, deque(maxlen=self._keep)).extend(lines)
        finally:
            self._flush_owed()

    def room_news(self, room: str, data: bytes, origin: str, mine: bool, live: bool) -> None:
        """A cluster node: roomnews.py's news of folded `room` from node `origin` (`mine`:
        this node), in the room's order (the backplane's subscriber thread); `live` is
        False for a room's latest state read from Redis after a subscription (applied,
        not announced). Raises `ValueError` for news that does not decode."""
        news = RoomNews.decode(data)
        try:
            with self._lock:
                if news.kind is NewsKind.KICK:
                    self._kicked_here_locked(room, news, mine)
                elif news.kind is NewsKind.UNINVITE:
                    self._uninvited_locked(room, held_of(news.target))
                else:
                    self._state_news_locked(room, news, mine, live)
        finally:
            self._flush_owed()

    def _kicked_here_locked(self, room: str, news: RoomNews, mine: bool) -> None:
        """Another node's member kicked a member of `room` this node serves."""
        found = self._rooms.get(room)
        if mine or found is None:
            return
        shown = self._rooms.put_out(found, news.target)
        if shown is not None:  # else it left meanwhile
            self._put_out(found, shown, by=news.by, reason=news.reason)

    def _state_news_locked(self, room: str, news: RoomNews, mine: bool, live: bool) -> None:
        """A room's new shared state: applied unless this node has news of its own on
        the way (roomnews.py), then announced to this node's members."""
        state = news.state
        assert state is not None  # RoomNews.decode checked
        pending = self._unconfirmed.get(room, 0)
        if mine and pending:
            pending -= 1
            if pending:
                self._unconfirmed[room] = pending
            else:
                del self._unconfirmed[room]
        found = self._rooms.get(room)
        if not pending:  # this node's own too: what another's skipped meanwhile is undone so
            if found is not None and found.registered and not state.owner and news.what != RELEASED:
                # Made before the registration was known there: it does not undo it. Its
                # own change is kept, and the whole is sent again: the node that made it
                # may have skipped the registration's news (its own was on the way).
                state.apply_unregistered(found)
                self._rooms.index_guest_invites(found)
                self._share_locked(found)
            else:
                if found is not None and found.registered and not state.owner:
                    self._rooms.release(found.name)  # released by its node's store
                    if not self._persisted(found):
                        self._unsaved.pop(room, None)
                    self._forget_if_vanished(found)
                    found = self._rooms.get(room)
                if found is None and state.owner:  # a registered room exists on every node
                    found = self._rooms.load(
                        state.name,
                        owner=state.owner,
                        topic=state.topic,
                        invite_only=state.invite_only,
                        operators=state.operators,
                        bans=state.bans,
                    )
                if found is not None:
                    state.apply(found)
                    self._rooms.index_guest_invites(found)
                elif self._remote.get(room):
                    self._shared[room] = state
            if found is not None:
                # Members its bans cover leave, whatever the news was (a state read
                # from Redis may carry a ban whose own news this node never had).
                for shown in self._rooms.put_out_banned(found):
                    self._put_out(found, shown, by=news.by, reason="banned")
        if news.what == INVITE and not mine and live:
            # Told wherever the invitee is, whether or not the room has members there.
            invitee = self._members.get(fold_nick(news.target))
            if invitee is not None and invitee.version > 1:
                name = state.name if found is None else found.name
                invitee.member.deliver(encode(Invited(room=name, nick=invitee.nick, by=news.by)))
        if live and found is not None and news.what not in ("", BAN, INVITE, RELEASED):
            self._announce_change(found, news.by, news.what)

    def _uninvited_locked(self, room: str, held: bytes | str) -> None:
        """Invitation `held` of folded `room` ended on another node (used, or its guest
        left); on this one too."""
        found = self._rooms.get(room)
        if found is not None:
            found.invites.pop(held, None)
        elif room in self._shared:
            self._shared[room] = self._shared[room].without(held)

    def _uninvite_locked(self, name: str, held: bytes | str) -> None:
        """A cluster node: invitation `held` of room `name` ended here: so it does on the
        other nodes (news of what changed, not a whole state: see roomnews.py)."""
        if self._publish_news is not None:
            news = RoomNews(NewsKind.UNINVITE, target=held_name(held))
            self._publish_news(fold_room(name), news.encode(), False)

    def _guest_gone_locked(self, nick: str) -> None:
        """Guest `nick` left (or renamed): its invitations end, in the rooms here and in
        those only other nodes have (a cluster node tells them)."""
        folded = fold_nick(nick)
        for room in self._rooms.forget_guest(nick):
            self._uninvite_locked(room.name, folded)
        for folded_room, state in list(self._shared.items()):
            if any(held == folded for held, _ in state.invites):
                self._shared[folded_room] = state.without(folded)
                self._uninvite_locked(state.name, folded)

    def remote_members(self, members: Iterable[tuple[str, str, str, bytes]]) -> None:
        """A cluster node: who other nodes have in which room, read from Redis after each
        subscription (later changes come to `deliver_lines`): (folded room, nick, node,
        identity key or b""). Replaces what this node held of them at once, so that no
        newcomer meanwhile finds a room other nodes have looking new. A room this node
        held others' members of and no longer does is gone, with what it kept of it."""
        remote: dict[str, dict[str, dict[str, tuple[str, bytes]]]] = {}
        for room, nick, node, key in members:
            remote.setdefault(room, {}).setdefault(fold_nick(nick), {})[node] = (nick, key)
        with self._lock:
            gone = self._remote.keys() - remote.keys()
            self._remote = remote
            for room in gone:
                self._gone_locked(room)

    def resubscribed(self) -> None:
        """A cluster node: its subscription was made again; what comes back of its own
        news is applied as any news (roomnews.py), whatever it counted as on the way."""
        with self._lock:
            self._unconfirmed.clear()

    def drop_node(self, node: str) -> None:
        """A cluster node: node `node` died; its members are gone from every room, and this
        node's members of those rooms are told so (the backplane's subscriber thread)."""
        try:
            with self._lock:
                for folded_room, members in list(self._remote.items()):
                    found = self._rooms.get(folded_room)
                    for key, nodes in list(members.items()):
                        held = nodes.pop(node, None)
                        if held is None:
                            continue
                        if not nodes:
                            del members[key]
                        # Shown as gone only if no other node, nor this one, has them.
                        if found is not None and not nodes and key not in found.members:
                            left = Left(room=found.name, nick=held[0], reason="its server was lost")
                            self._fan_out_locked(found, encode(left), self._owed)
                    if not members:
                        del self._remote[folded_room]
                        self._gone_locked(folded_room)
        finally:
            self._flush_owed()

    def _remote_presence_locked(self, room: str, event: Joined | Left, node: str, key: bytes) -> bool:
        """Apply another node's `joined`/`left`; False if it is no news to this node's
        members: a member announced again (after Redis lost its data), or a person who
        was (or still is) in the room through another node or this one, their devices."""
        members = self._remote.setdefault(room, {})
        folded = fold_nick(event.nick)
        found = self._rooms.get(room)
        here = found is not None and folded in found.members
        nodes = members.setdefault(folded, {})
        if isinstance(event, Joined):
            news = not nodes and not here
            nodes[node] = (event.nick, key)
        else:
            news = nodes.pop(node, None) is not None and not nodes and not here
        if not nodes:
            del members[folded]
        if not members:
            del self._remote[room]
            self._gone_locked(room)
        return news

    def _gone_locked(self, room: str) -> None:
        """A cluster node: the last member other nodes had of folded `room` left; if it
        has none here either, the room is gone, with what this node kept of it."""
        if self._rooms.get(room) is None:
            self._shared.pop(room, None)
            self._history.pop(room, None)

    def announce_members(self) -> None:
        """A cluster node: tell the other nodes again who is in each room here, and each
        such room's shared state (the backplane registered again after Redis lost its
        data, states included). The lease thread."""
        with self._lock:
            for room in self._rooms.all():
                for folded in room.members:
                    entry = self._members.get(folded)
                    if entry is not None:
                        self._tell_cluster(room, Joined(room=room.name, nick=entry.nick))
                if room.members:
                    self._share_locked(room)

    def _tell_cluster(self, room: Room, event: Joined | Left) -> None:
        """A cluster node: one of this node's members entered or left `room` (under the
        lock; only queues)."""
        if self._publish_presence is not None:
            joined = isinstance(event, Joined)
            entry = self._members.get(fold_nick(event.nick)) if joined else None
            key = b"" if entry is None else entry.key
            self._publish_presence(fold_room(room.name), event.nick, joined, encode(event), key)

    def flush_presence(self) -> None:
        """Send the pending join/leave notices (one write per member)."""
        try:
            with self._lock:
                self._flush_presence_locked(self._owed)
        finally:
            self._flush_owed()

    def _flush_owed(self) -> None:
        """Make the flushes staging left owed; called without the hub lock, by the thread
        that staged.

        One thread at a time makes them all, whoever finds nobody doing it; the others
        just return. A member's one write then carries everything staged for it
        meanwhile, by every sender (outbox.py), and a crowd of senders does not become
        a crowd of threads contending for the members' locks and the GIL, which cost
        more than the writes it saved. The bare `self._owed` read after releasing
        `_flushing` catches work appended by a thread whose acquire failed just before:
        its append happened before that attempt, so before this read.
        """
        while self._owed and self._flushing.acquire(blocking=False):
            try:
                while True:
                    with self._lock:
                        owed, self._owed = self._owed, []
                    if not owed:
                        break
                    for flush in owed:
                        flush()
            finally:
                self._flushing.release()

    # -- the store's side (the server's start and its periodic saves) ----------------

    def load_rooms(self, rooms: Iterable[StoredRoom]) -> None:
        """Add the registered rooms (at start, from the store)."""
        with self._lock:
            for stored in rooms:
                self._rooms.load(
                    stored.name,
                    owner=stored.owner_key,
                    topic=stored.topic,
                    invite_only=stored.invite_only,
                    operators=stored.operators,
                    bans=tuple(Ban(BanKind(b.kind), b.value, b.shown, b.by) for b in stored.bans),
                )

    def persisted_rooms(self) -> list[str]:
        """The rooms whose lines the store keeps: autojoin and registered ones."""
        with self._lock:
            return [room.name for room in self._rooms.all() if self._persisted(room)]

    def load_history(self, lines: Iterable[Message]) -> None:
        """Seed rooms' history (at start, from the store); each line names its room."""
        seeded = list(lines)
        with self._lock:
            for line in seeded:
                if self._keep:
                    self._history.setdefault(fold_room(line.room), deque(maxlen=self._keep)).append(line)
            self._last_ts = max([self._last_ts, *(line.ts for line in seeded)])

    def unsaved(self) -> list[Message]:
        """Room lines not yet written to the store, oldest first per room (they stay
        unsaved until `saved` is called with them)."""
        with self._lock:
            return [line for lines in self._unsaved.values() for line in lines]

    def saved(self, lines: Sequence[Message]) -> int:
        """`lines` (from `unsaved`) are in the store now: stop holding them as unsaved.

        Returns how many unsaved lines were dropped unwritten since the last call because
        a room's buffer was full (see `__init__`: none that the store would have kept).
        """
        written = {id(line) for line in lines}
        with self._lock:
            # The written lines are the oldest ones still held in each room (newer ones
            # were appended after them; older ones may have been pushed out meanwhile).
            for unsaved in self._unsaved.values():
                while unsaved and id(unsaved[0]) in written:
                    unsaved.popleft()
            dropped, self._unsaved_dropped = self._unsaved_dropped, 0
        return dropped

    # -- under the lock --------------------------------------------------------------

    def _online(self, nick: str) -> _Online:
        entry = self._members.get(fold_nick(nick))
        if entry is None:
            raise RoomError(Code.UNEXPECTED, "not logged in")  # a session after it left
        return entry

    def _persisted(self, room: Room) -> bool:
        return room.permanent or room.registered

    def _users(self, room: Room) -> tuple[str, ...]:
        """`Registry.users(room)`: the members' nicks by folded nick, copied from the
        sorted list the registry keeps as members come and go (a sort per login was
        ~0.5 ms at 2,000 members; bringing a sorted copy up to date by the difference,
        as the hub did next, still cost ~0.4 ms: five passes over the room). A cluster
        node adds the members other nodes serve."""
        remote = self._remote.get(fold_room(room.name))
        if not remote:
            return tuple(room.shown)
        extra = [next(iter(nodes.values()))[0] for key, nodes in remote.items() if key not in room.members]
        return tuple(sorted([*room.shown, *extra], key=fold_nick))

    def _owner_nick(self, room: Room) -> str:
        """`Registry.owner_nick`; a cluster node also looks at the members other nodes
        serve."""
        here = self._rooms.owner_nick(room)
        if here or not room.owner:
            return here
        held = self._remote_holders(room, frozenset((room.owner,)))
        return held[0] if held else ""

    def _operator_nicks(self, room: Room) -> tuple[str, ...]:
        """`Registry.operator_nicks`; a cluster node adds the operators other nodes serve."""
        here = self._rooms.operator_nicks(room)
        if not room.operators or not self._remote.get(fold_room(room.name)):
            return here
        there = self._remote_holders(room, frozenset(room.operators))
        return tuple(sorted({fold_nick(n): n for n in (*here, *there)}.values(), key=fold_nick))

    def _remote_holders(self, room: Room, keys: frozenset[bytes]) -> list[str]:
        """The nicks other nodes serve in `room` holding one of `keys`, not members here."""
        remote = self._remote.get(fold_room(room.name), {})
        return sorted(
            (
                shown
                for folded, nodes in remote.items()
                if folded not in room.members
                for shown, key in itertools.islice(nodes.values(), 1)
                if key in keys
            ),
            key=fold_nick,
        )

    def _away(self, room: Room) -> tuple[str, ...]:
        """The members of `room` who set an away message, in the order of `_users`.

        This costs what the away members of the room cost (a set intersection in C, then
        a sort of the few it finds), not a look at every member: it runs for every
        login's `entered`, in rooms of thousands. Sessions tell the hub (`set_away`)."""
        members = self._members
        # A dict view's `&` walks the smaller of the two.
        return tuple(members[f].nick for f in sorted(room.members.keys() & self._away_nicks))

    def _announce_entry(self, room: Room, nick: str, member: Member) -> None:
        folded = fold_room(room.name)
        pending = self._presence.setdefault(folded, [])
        joined = Joined(room=room.name, nick=nick)
        if not self._elsewhere(room, nick):  # in the room already, through another node
            pending.append(encode(joined))
        self._tell_cluster(room, joined)
        # What it is sent on entering lists everyone, itself included: it needs only the
        # notices after its own.
        self._newcomers.setdefault(folded, {})[id(member)] = len(pending)

    def _send_entry(self, room: Room, member: Member, version: int, *, history: bool = True) -> None:
        """`entered` (version 2) and (if `history`) the room's history, before any live
        event of it."""
        frames = []
        if version > 1:
            frames.append(
                encode(
                    Entered(
                        room=room.name,
                        users=self._users(room),
                        away=self._away(room),
                        topic=room.topic,
                        invite_only=room.invite_only,
                        registered=room.registered,
                        owner=self._owner_nick(room),
                        operators=self._operator_nicks(room),
                    )
                )
            )
        if history:
            frames.extend(
                encode(dataclasses.replace(line, history=True))
                for line in self._history.get(fold_room(room.name), ())
            )
        if frames:
            member.deliver(b"".join(frames))

    def _changed(self, room: Room, nick: str, what: str) -> None:
        """Tell every member (version 2) the room's whole new state after a change (a
        cluster node: every node's members, in the room's order, by `room_news`)."""
        shown = self._members[fold_nick(nick)].nick
        if self._publish_news is not None:
            self._share_locked(room, what=what, by=shown)
        else:
            self._announce_change(room, shown, what)

    def _announce_change(self, room: Room, shown: str, what: str) -> None:
        """`room_changed` (`what`, by `shown`) to this node's members (version 2)."""
        self._flush_presence_locked()
        frame = encode(
            RoomChanged(
                room=room.name,
                nick=shown,
                what=what,
                topic=room.topic,
                invite_only=room.invite_only,
                registered=room.registered,
                owner=self._owner_nick(room),
                operators=self._operator_nicks(room),
            )
        )
        self._fan_out_locked(room, frame, version_1=False)

    def _put_out(self, room: Room, shown: str, *, by: str, reason: str) -> None:
        """`shown` was removed from `room` (kick, ban): it and the members get `left`."""
        self._flush_presence_locked()
        left = Left(room=room.name, nick=shown, reason=reason, by=by)
        target = self._members.get(fold_nick(shown))
        if target is not None:
            self._newcomers.get(fold_room(room.name), {}).pop(id(target.member), None)
            target.member.deliver(encode(left))
        self._after_leaving(room, left)

    def _after_leaving(self, room: Room, left: Left) -> None:
        """Someone left `room` at once (not a disconnect): the rest get `left` now."""
        self._flush_presence_locked()
        self._fan_out_locked(room, encode(left))
        self._tell_cluster(room, left)
        self._forget_if_vanished(room)

    def _notice(self, room: Room, event: Left) -> None:
        if not self._elsewhere(room, event.nick):  # still in the room, through another node
            self._presence.setdefault(fold_room(room.name), []).append(encode(event))
        self._tell_cluster(room, event)

    def _share_locked(self, room: Room, *, what: str = "", by: str = "", target: str = "") -> None:
        """A cluster node: send `room`'s shared state after a change made here (`what`,
        by `by`; `target` an invitee) to every node, this one too, in the room's order
        (under the lock; only queues). A single server: nothing."""
        if self._publish_news is None:
            return
        folded = fold_room(room.name)
        self._unconfirmed[folded] = self._unconfirmed.get(folded, 0) + 1
        news = RoomNews(NewsKind.STATE, by=by, what=what, target=target, state=SharedState.of(room))
        self._publish_news(folded, news.encode(), True)

    def _elsewhere(self, room: Room, nick: str) -> bool:
        """A cluster node: whether another node has `nick` in `room` (under the lock)."""
        return fold_nick(nick) in self._remote.get(fold_room(room.name), {})

    def _forget_if_vanished(self, room: Room) -> None:
        if self._rooms.vanished(room):
            folded = fold_room(room.name)
            if self._remote.get(folded):  # it goes on elsewhere: kept for a newcomer here
                self._shared[folded] = SharedState.of(room)
            else:
                self._history.pop(folded, None)
            self._unsaved.pop(folded, None)
            self._presence.pop(folded, None)
            self._newcomers.pop(folded, None)
            self._fanouts.pop(folded, None)

    def _fan_out_locked(
        self,
        room: Room,
        frame: bytes,
        flushes: list[Callable[[], None]] | None = None,
        *,
        version_1: bool = True,
    ) -> None:
        """Stage `frame` (one encoded bytes object for all) for every member of `room`.

        With `flushes`, the flushes owed are appended to it and the caller makes them
        once it has released the lock (the hot paths: room lines, presence); without,
        they are made here, under the lock (the rare events: a kick, a settings change).
        Staging under the lock is what keeps one order per room.
        """
        owed: list[Callable[[], None]] = [] if flushes is None else flushes
        if version_1:  # every member: a room line, a `left`
            folded_room = fold_room(room.name)
            fanout = self._fanouts.get(folded_room)
            if (
                fanout is None
                or fanout.room is not room
                or fanout.generation != (room.generation, self._members_generation)
            ):
                fanout = self._fanouts[folded_room] = _Fanout(room, self._members_generation, self._members)
            for stage, flush in fanout.targets:
                if stage(frame):
                    owed.append(flush)
        else:
            members = self._members
            for folded in room.members:
                entry = members[folded]
                if entry.version > 1 and entry.stage(frame):
                    owed.append(entry.flush)
        if flushes is None:
            for flush in owed:
                flush()

    def _flush_presence_locked(self, flushes: list[Callable[[], None]] | None = None) -> None:
        """Stage the pending join/leave notices, one frame per member; `flushes` as in
        `_fan_out_locked`."""
        if not self._presence:
            return
        presence, self._presence = self._presence, {}
        newcomers, self._newcomers = self._newcomers, {}
        writes: dict[int, tuple[_Online, list[bytes]]] = {}  # one write per member
        for folded, notices in presence.items():
            room = self._rooms.get(folded)
            if room is None or not notices:
                continue
            blob = b"".join(notices)
            starts = [0, *itertools.accumulate(len(n) for n in notices)]  # byte offset of each notice
            skip = newcomers.get(folded, {})
            for member_nick in room.members:
                entry = self._members[member_nick]
                first = skip.get(id(entry.member))
                part = blob if first is None else blob[starts[first] :]
                if part:
                    writes.setdefault(id(entry.member), (entry, []))[1].append(part)
        owed: list[Callable[[], None]] = [] if flushes is None else flushes
        for entry, parts in writes.values():
            if entry.stage(parts[0] if len(parts) == 1 else b"".join(parts)):
                owed.append(entry.flush)
        if flushes is None:
            for flush in owed:
                flush()


@dataclass(eq=False)
class _Said:
    """One `say_many` call's lines, waiting in `Hub._said`. `done` and `error` are set
    under the hub's lock by whoever fanned them out; the caller reads them after taking
    that lock itself."""

    nick: str
    says: Sequence[Say]
    done: bool = False
    error: Exception | None = None


class _Fanout:
    """Each member's `stage` and `flush` for one room, in the room's order, as they were
    at `generation` (the room's, the hub's members'). Guarded by the hub's lock."""

    def __init__(self, room: Room, members_generation: int, members: dict[str, _Online]) -> None:
        self.room = room
        self.generation = (room.generation, members_generation)
        self.targets = [(members[f].stage, members[f].flush) for f in room.members]


def _stored(name: str, settings: Settings) -> StoredRoom:
    return StoredRoom(
        name=name,
        owner_key=settings.owner,
        topic=settings.topic,
        invite_only=settings.invite_only,
        operators=settings.operators,
        bans=tuple(StoredBan(b.kind.value, b.value, b.shown, b.by) for b in settings.bans),
    )


def _order(room: Room, autojoin: Sequence[str]) -> int:
    """Autojoin rooms first, in the configured order, then the others."""
    folded = [fold_room(name) for name in autojoin]
    name = fold_room(room.name)
    return folded.index(name) if name in folded else len(folded)
