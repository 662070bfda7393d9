"""Rooms: membership, settings, invitations, bans, and who may do what.

Pure bookkeeping: no locks, no I/O, no clock reads (the caller passes `now`). The hub owns
one `Rooms` and calls it under the hub lock; nothing else touches it. Every refused
request raises `RoomError` with the wire code and a reason for the user, before anything
changed.

People are known by their folded nick and their identity key (b"" for a guest). Owners,
operators and key bans hold identity keys, never nicks, so a nick change (or a second nick
of the same key) changes nothing about what someone may do or where they may go.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from ..protocol import Code, fold_nick, fold_room
from ..protocol.limits import MAX_ROOMS_LISTED
from ..protocol.rooms import is_pattern
from .wildcard import matches

if TYPE_CHECKING:
    from .config import ServerConfig

__all__ = [
    "Ban",
    "BanKind",
    "NoSuchRoom",
    "Room",
    "RoomError",
    "RoomSummary",
    "Rooms",
    "Settings",
    "search",
]

#: An invitation is kept this long if unused (or until used, or the room vanishes): long
#: enough to answer after lunch, short enough that old invitations do not pile up.
INVITE_TTL = 3600.0

#: Invitations one room holds at once (expired ones do not count): what a busy room's
#: operators hand out in an hour, and a bound on what an operator (or, in an unregistered
#: room, any member) can make the server keep.
MAX_INVITES = 200


class BanKind(Enum):
    """What a ban holds: an identity key (registered nicks) or a nick pattern (guests)."""

    KEY = "key"
    PATTERN = "pattern"


@dataclass(frozen=True)
class Ban:
    """One ban of a room. `value` is the identity key (KEY) or the folded pattern
    (PATTERN); `shown` is the mask as the ban list shows it (for a key: the nick it was
    set on), which is also what `unban` takes; `by` is the banner's nick."""

    kind: BanKind
    value: bytes | str
    shown: str
    by: str


class RoomError(Exception):
    """A room request was refused; `code` goes on the wire, `reason` to the user."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class NoSuchRoom(RoomError):
    """The request named a room that does not exist."""

    def __init__(self, name: str) -> None:
        super().__init__(Code.NO_SUCH_ROOM, f"no room {name}")


@dataclass
class Room:
    """One room. Mutated only by `Rooms`, under the hub lock."""

    #: As the creator (or the configuration, or the registration) spelt it.
    name: str
    #: The identity key of the session that created it; b"" for a guest or the configuration.
    creator: bytes = b""
    #: An autojoin room: it exists from start and never vanishes.
    permanent: bool = False
    topic: str = ""
    invite_only: bool = False
    #: The owner's identity key once registered; b"" while unregistered (so a registered
    #: room always has an owner: one field, not a flag and a key that could disagree).
    owner: bytes = b""
    operators: set[bytes] = field(default_factory=set)
    bans: list[Ban] = field(default_factory=list)
    #: Invitations -> when each expires. An identity user's is by identity key (bytes), so
    #: it follows the person through a rename and no guest taking the nick can use it; a
    #: guest's is by folded nick (str), and ends when that guest leaves or renames.
    invites: dict[bytes | str, float] = field(default_factory=dict)
    #: Members: folded nick -> nick as shown, in the order they entered.
    members: dict[str, str] = field(default_factory=dict)
    #: Counts the changes of `members` (every join, leave and rename): the hub keeps what
    #: it derives from the members per room line (whom to stage it for) while it is equal.
    generation: int = 0
    #: `members`' folded nicks sorted, and beside each its nick as shown: kept in step
    #: with `members` (`_add_member`, `_remove_member`), so the member list every
    #: newcomer is sent costs neither a sort nor a look at each member.
    order: list[str] = field(default_factory=list, repr=False)
    shown: list[str] = field(default_factory=list, repr=False)
    #: The members holding each identity key (guests not included): key -> folded nick ->
    #: nick as shown, in the order they entered. Kept in step with `members`, so the
    #: owner and operators present are found without a look at every member (they are
    #: in every newcomer's `entered`).
    holders: dict[bytes, dict[str, str]] = field(default_factory=dict, repr=False)

    @property
    def registered(self) -> bool:
        return bool(self.owner)

    @property
    def settings(self) -> Settings:
        return Settings(self.topic, self.invite_only, self.owner, frozenset(self.operators), tuple(self.bans))

    def restore(self, settings: Settings) -> None:
        """Set this room's settings to `settings` (taken from `settings` before)."""
        self.topic, self.invite_only, self.owner = settings.topic, settings.invite_only, settings.owner
        self.operators, self.bans = set(settings.operators), list(settings.bans)

    def moderator(self, key: bytes) -> bool:
        """True if `key` is this registered room's owner or one of its operators."""
        return bool(key) and self.registered and (key == self.owner or key in self.operators)


def _add_member(room: Room, folded_nick: str, nick: str, key: bytes) -> None:
    """`nick` (folded: `folded_nick`, not a member), holding `key`, is in `room` now."""
    room.members[folded_nick] = nick
    if key:
        room.holders.setdefault(key, {})[folded_nick] = nick
    at = bisect_left(room.order, folded_nick)
    room.order.insert(at, folded_nick)
    room.shown.insert(at, nick)
    room.generation += 1


def _remove_member(room: Room, folded_nick: str, key: bytes) -> None:
    """`folded_nick` (a member holding `key`) is no longer in `room`."""
    del room.members[folded_nick]
    if key:
        holding = room.holders[key]
        del holding[folded_nick]
        if not holding:
            del room.holders[key]
    at = bisect_left(room.order, folded_nick)
    del room.order[at]
    del room.shown[at]
    room.generation += 1


@dataclass(frozen=True)
class Settings:
    """What a registered room keeps in the store: everything a settings change changes."""

    topic: str
    invite_only: bool
    owner: bytes
    operators: frozenset[bytes]
    bans: tuple[Ban, ...]


@dataclass(frozen=True)
class RoomSummary:
    """One line of a `list` answer."""

    name: str
    users: int
    topic: str


@dataclass
class _Person:
    nick: str
    key: bytes
    # Folded names of the rooms they are in, in the order entered (a dict for its order;
    # the values mean nothing).
    rooms: dict[str, None] = field(default_factory=dict)


class Rooms:
    """Every room of the server and who is in which. See the module docstring."""

    def __init__(
        self,
        *,
        autojoin: tuple[str, ...] = (),
        max_rooms_per_user: int = 20,
        max_rooms: int = 1000,
        max_bans_per_room: int = 200,
        max_registered_rooms_per_owner: int = 5,
    ) -> None:
        self.max_rooms_per_user = max_rooms_per_user
        self.max_registered_rooms_per_owner = max_registered_rooms_per_owner
        self.max_rooms = max_rooms
        self.max_bans_per_room = max_bans_per_room
        self._rooms: dict[str, Room] = {}  # folded name -> room
        self._people: dict[str, _Person] = {}  # folded nick -> person in at least one room
        # Guests' invitations: folded guest nick -> folded rooms that may hold one (a guest
        # may be in no room at all), so that leaving or renaming ends them.
        self._guest_invites: dict[str, set[str]] = {}
        self.autojoin = tuple(autojoin)
        for name in autojoin:
            self._rooms.setdefault(fold_room(name), Room(name=name, permanent=True))

    @classmethod
    def from_config(cls, config: ServerConfig) -> Rooms:
        """The autojoin rooms and caps `config` sets (the server's and the tests' one way)."""
        return cls(
            autojoin=config.autojoin,
            max_rooms_per_user=config.max_rooms_per_user,
            max_rooms=config.max_rooms,
            max_bans_per_room=config.max_bans_per_room,
            max_registered_rooms_per_owner=config.max_registered_rooms_per_owner,
        )

    # -- reading ----------------------------------------------------------------------

    def get(self, name: str) -> Room | None:
        return self._rooms.get(fold_room(name))

    def room(self, name: str) -> Room:
        """The room called `name`; raises `NoSuchRoom` if there is none."""
        room = self._rooms.get(fold_room(name))
        if room is None:
            raise NoSuchRoom(name)
        return room

    def __len__(self) -> int:
        return len(self._rooms)

    def all(self) -> list[Room]:
        """Every room, registered and autojoin ones included."""
        return list(self._rooms.values())

    def rooms_of(self, nick: str) -> list[Room]:
        """The rooms `nick` is in, in the order entered."""
        person = self._people.get(fold_nick(nick))
        if person is None:
            return []
        return [self._rooms[r] for r in person.rooms]

    def key_of(self, nick: str) -> bytes | None:
        """The identity key of `nick` (b"" for a guest), or None if in no room."""
        person = self._people.get(fold_nick(nick))
        return None if person is None else person.key

    def present(self, room: Room, key: bytes) -> list[str]:
        """The nicks of `room`'s members who hold `key` (several nicks may share a key)."""
        if not key:
            return []
        return list(room.holders.get(key, {}).values())

    def owner_nick(self, room: Room) -> str:
        """The owner's nick if a member holding the owner's key is in the room, else ""."""
        present = self.present(room, room.owner)
        return present[0] if present else ""

    def operator_nicks(self, room: Room) -> tuple[str, ...]:
        """The nicks of the operators present (the owner not included), sorted."""
        if not room.operators:
            return ()
        holders = room.holders
        return tuple(
            sorted(
                (nick for key in room.operators if key in holders for nick in holders[key].values()),
                key=fold_nick,
            )
        )

    def users(self, room: Room) -> tuple[str, ...]:
        """The members' nicks, sorted case-insensitively (by folded nick)."""
        return tuple(room.shown)

    def search(self, pattern: str) -> tuple[list[RoomSummary], bool]:
        """`search(self.summaries(), pattern)`: the rooms matching `pattern`."""
        return search(self.summaries(), pattern)

    def summaries(self) -> list[RoomSummary]:
        """A copy of every room's `list` line, for `search` outside the hub's lock."""
        return [RoomSummary(room.name, len(room.members), room.topic) for room in self._rooms.values()]

    # -- membership -------------------------------------------------------------------

    def join(
        self,
        name: str,
        nick: str,
        key: bytes,
        now: float,
        *,
        autojoin: bool = False,
        seed: Callable[[Room], None] | None = None,
    ) -> tuple[Room, bool]:
        """Put `nick` (holding `key`) in room `name`, creating it if needed. Returns the room
        and whether `nick` was already there (then nothing changed).

        Refusals, in this order: the person's room cap, the server's room cap (creating),
        a ban (which wins over an invitation), invite-only without an invitation. An
        autojoin is never refused for the person's cap (the configuration chose it), but
        the autojoin rooms they are in count towards it like any other.

        `seed` (a cluster node: the room exists on other nodes, not yet here) gives a room
        made here its shared state before the checks, so that it is entered as it is
        elsewhere: by its creator there, with its bans and invitations.
        """
        folded_nick = fold_nick(nick)
        folded = fold_room(name)
        person = self._people.get(folded_nick)
        room = self._rooms.get(folded)
        if room is not None and folded_nick in room.members:
            return room, True
        if not autojoin and person is not None and len(person.rooms) >= self.max_rooms_per_user:
            raise RoomError(
                Code.QUOTA, f"you are in {len(person.rooms)} rooms, the most one person may be in"
            )
        if room is None:
            if len(self._rooms) >= self.max_rooms:
                raise RoomError(Code.QUOTA, f"this server has {len(self._rooms)} rooms, its most")
            room = Room(name=name, creator=key)
            if seed is not None:
                seed(room)
                self._check_may_enter(room, folded_nick, key, now)
                room.invites.pop(key or folded_nick, None)  # used
            self._rooms[folded] = room
        else:
            self._check_may_enter(room, folded_nick, key, now)
            room.invites.pop(key or folded_nick, None)  # used
        if person is None:
            person = self._people[folded_nick] = _Person(nick=nick, key=key)
        _add_member(room, folded_nick, nick, person.key)
        person.rooms[folded] = None
        return room, False

    def check_autojoin(self, name: str, nick: str, key: bytes, now: float) -> None:
        """Raise the `RoomError` that `join(name, ..., autojoin=True)` would, changing
        nothing (the hub refuses a version-1 login that could not be in `#lobby`)."""
        room = self.get(name)
        if room is not None and fold_nick(nick) not in room.members:
            self._check_may_enter(room, fold_nick(nick), key, now)

    def _check_may_enter(self, room: Room, folded_nick: str, key: bytes, now: float) -> None:
        if self.banned(room, folded_nick, key):
            raise RoomError(Code.BANNED, f"you are banned from {room.name}")
        if room.invite_only and not room.moderator(key):
            expires = room.invites.get(key or folded_nick)
            if expires is None or expires <= now:
                room.invites.pop(key or folded_nick, None)
                raise RoomError(
                    Code.INVITE_ONLY, f"{room.name} is invite-only: ask an operator for an invitation"
                )

    @staticmethod
    def banned(room: Room, folded_nick: str, key: bytes) -> bool:
        """True if a member holding `key` under `folded_nick` may not be in `room`. Key bans
        apply to that key under any nick; patterns to guests only; never to the owner."""
        return Rooms.ban_on(room, folded_nick, key) is not None

    @staticmethod
    def ban_on(room: Room, folded_nick: str, key: bytes) -> Ban | None:
        """The first of `room`'s bans that covers a member holding `key` under
        `folded_nick` (as `banned` reads them), None if none does."""
        if key and key == room.owner:
            return None
        for ban in room.bans:
            if ban.kind is BanKind.KEY:
                if key and ban.value == key:
                    return ban
            elif not key and isinstance(ban.value, str) and matches(ban.value, folded_nick):
                return ban
        return None

    def part(self, name: str, nick: str) -> Room:
        """Take `nick` out of room `name`. Returns the room (which may have vanished)."""
        room = self._member_room(name, nick)
        self._remove(room, fold_nick(nick))
        return room

    def quit(self, nick: str) -> list[Room]:
        """Take `nick` out of every room (a disconnect). Returns the rooms it was in."""
        person = self._people.get(fold_nick(nick))
        if person is None:
            return []
        left = [self._rooms[r] for r in person.rooms]
        for room in left:
            self._remove(room, fold_nick(nick))
        return left

    def vanished(self, room: Room) -> bool:
        """True if `room` no longer exists (its last member left and nothing kept it)."""
        return self._rooms.get(fold_room(room.name)) is not room

    def _remove(self, room: Room, folded_nick: str) -> None:
        person = self._people[folded_nick]
        _remove_member(room, folded_nick, person.key)
        person.rooms.pop(fold_room(room.name), None)
        if not person.rooms:
            del self._people[folded_nick]
        if not room.members and not room.registered and not room.permanent:
            # An unregistered room vanishes with its settings, invitations and bans.
            del self._rooms[fold_room(room.name)]

    def check_rename(self, old: str, new: str, key: bytes) -> None:
        """Raise `RoomError` (banned) if `old`, holding `key`, may not be called `new` in a
        room it is in: a ban there covers `new` (IRC's rule; else a rename would walk a
        banned nick into the room). Changes nothing."""
        for room in self.rooms_of(old):
            if self.banned(room, fold_nick(new), key):
                raise RoomError(Code.BANNED, f"cannot change nick while banned in {room.name}")

    def forget_guest(self, nick: str) -> list[Room]:
        """The guest `nick` left (or renamed): its invitations end, so that the next guest
        of that nick finds none. (An identity user's are by key: a no-op for them.) The
        rooms whose invitations changed."""
        folded = fold_nick(nick)
        changed = []
        for name in self._guest_invites.pop(folded, ()):
            room = self._rooms.get(name)
            if room is not None and room.invites.pop(folded, None) is not None:
                changed.append(room)
        return changed

    def index_guest_invites(self, room: Room) -> None:
        """`room`'s invitations were set from elsewhere (a cluster's shared state): its
        guests' ones are indexed, so that `forget_guest` ends them here too."""
        for held in room.invites:
            if isinstance(held, str):
                self._guest_invites.setdefault(held, set()).add(fold_room(room.name))

    def rename(self, old: str, new: str) -> list[Room]:
        """`old` is now called `new` (not held by anyone present). Membership and what the
        person may do (by key) are unchanged; a guest's invitations end (`forget_guest`).
        Returns the rooms they are in."""
        if fold_nick(old) != fold_nick(new):
            self.forget_guest(old)
        person = self._people.pop(fold_nick(old), None)
        if person is None:
            return []
        person.nick = new
        self._people[fold_nick(new)] = person
        rooms = [self._rooms[r] for r in person.rooms]
        for room in rooms:
            _remove_member(room, fold_nick(old), person.key)
            _add_member(room, fold_nick(new), new, person.key)
        return rooms

    # -- settings ---------------------------------------------------------------------

    def set_topic(self, name: str, nick: str, topic: str) -> Room:
        room = self._member_room(name, nick)
        if room.registered:
            self._require_moderator(room, nick, "set the topic")
        room.topic = topic
        return room

    def set_invite_only(self, name: str, nick: str, invite_only: bool) -> Room:
        room = self._member_room(name, nick)
        self._require_moderator(room, nick, "change its modes")
        room.invite_only = invite_only
        return room

    def invite(self, name: str, nick: str, invitee: str, invitee_key: bytes, now: float) -> Room:
        """Invite `invitee`, online holding `invitee_key` (b"" for a guest; the caller looked
        both up), until `now + INVITE_TTL`. At most `MAX_INVITES` wait per room."""
        room = self._member_room(name, nick)
        if room.registered:
            self._require_moderator(room, nick, "invite")
        # Expired invitations go first: they cannot pile up past one hour's worth.
        for held, expires in list(room.invites.items()):
            if expires <= now:
                del room.invites[held]
        held = invitee_key or fold_nick(invitee)
        if held not in room.invites and len(room.invites) >= MAX_INVITES:
            raise RoomError(
                Code.QUOTA,
                f"{room.name} has {len(room.invites)} invitations waiting, the most a room may have; "
                "they expire after an hour",
            )
        room.invites[held] = now + INVITE_TTL
        if not invitee_key:
            self._guest_invites.setdefault(fold_nick(invitee), set()).add(fold_room(room.name))
        return room

    def register(self, name: str, nick: str, charge: Callable[[], str] = lambda: "") -> Room:
        """Register room `name` to `nick`'s identity key, which must have created it and
        own fewer than `max_registered_rooms_per_owner` rooms. `charge` is called last,
        when nothing else refuses: it takes the registration's cost (the hub: one of the
        network's registrations) and returns "" or why it cannot (refused, quota-exceeded)."""
        room = self._member_room(name, nick)
        key = self._people[fold_nick(nick)].key
        if room.registered:
            raise RoomError(Code.ROOM_REGISTERED, f"{room.name} is already registered")
        if not key or key != room.creator:
            raise RoomError(Code.NOT_CREATOR, f"only the identity that created {room.name} may register it")
        self._check_owns_fewer(key, "you own")
        refusal = charge()
        if refusal:
            raise RoomError(Code.QUOTA, refusal)
        room.owner = key
        return room

    def _check_owns_fewer(self, key: bytes, who: str) -> None:
        owned = sum(1 for room in self._rooms.values() if room.owner == key)
        if owned >= self.max_registered_rooms_per_owner:
            raise RoomError(Code.QUOTA, f"{who} {owned} registered rooms, the most one identity may own")

    def release(self, name: str) -> Room | None:
        """Room `name` is no longer registered (the store released it: its owner was away
        too long): an ordinary room from now on, without operators, bans or invite-only,
        which vanishes when empty (an autojoin room stays). The room, or None if `name`
        was not a registered room."""
        room = self.get(name)
        if room is None or not room.registered:
            return None
        room.owner, room.creator, room.invite_only = b"", b"", False
        room.operators, room.bans = set(), []
        if not room.members and not room.permanent:
            del self._rooms[fold_room(room.name)]
        return room

    def load(
        self,
        name: str,
        *,
        owner: bytes,
        topic: str,
        invite_only: bool,
        operators: frozenset[bytes],
        bans: tuple[Ban, ...],
    ) -> Room:
        """Add a registered room from the store (at start, before anyone is in)."""
        folded = fold_room(name)
        permanent = folded in self._rooms and self._rooms[folded].permanent
        room = Room(
            name=name,
            creator=owner,
            permanent=permanent,
            topic=topic,
            invite_only=invite_only,
            owner=owner,
            operators=set(operators),
            bans=list(bans),
        )
        self._rooms[folded] = room
        return room

    # -- moderation -------------------------------------------------------------------

    def kick(self, name: str, nick: str, target: str) -> tuple[Room, str]:
        """`nick` removes `target` from room `name`. Returns the room and the target's nick
        as shown. The owner cannot be kicked."""
        room = self.check_kick(name, nick, target, None)
        shown = room.members.get(fold_nick(target))
        if shown is None:
            raise RoomError(Code.NOT_IN_ROOM, f"{target} is not in {room.name}")
        self.check_kick(name, nick, target, self._people[fold_nick(target)].key)
        self._remove(room, fold_nick(target))
        return room, shown

    def check_kick(self, name: str, nick: str, target: str, target_key: bytes | None) -> Room:
        """Raise the `RoomError` that `nick` kicking `target` (holding `target_key`, None
        if not known yet) from room `name` would, changing nothing; the room. A cluster
        node checks a kick of a member another node serves with this, and that node puts
        them out (`put_out`)."""
        room = self._member_room(name, nick)
        self._require_moderator(room, nick, "kick")
        if target_key is not None and target_key == room.owner:
            raise RoomError(Code.NOT_OPERATOR, f"the owner of {room.name} cannot be kicked")
        return room

    def put_out(self, room: Room, nick: str) -> str | None:
        """Remove `nick` from `room` (a kick checked by another node); its nick as shown,
        or None if it is not a member (it left meanwhile)."""
        shown = room.members.get(fold_nick(nick))
        if shown is not None:
            self._remove(room, fold_nick(nick))
        return shown

    def ban(self, name: str, nick: str, mask: str, mask_key: bytes | None) -> tuple[Room, list[str]]:
        """`nick` bans `mask` from room `name`. `mask_key` is the identity key `mask` is
        registered to (the caller looked it up), None if none or if `mask` is a pattern.

        A mask with `*` or `?` is a nick pattern for guests; a registered nick bans its
        key; any other nick is an exact pattern. Returns the room and the members it put
        out (the caller announces them as kicked)."""
        room = self.add_ban(name, nick, mask, mask_key)
        return room, self.put_out_banned(room)

    def add_ban(self, name: str, nick: str, mask: str, mask_key: bytes | None) -> Room:
        """`ban`'s change of the settings alone: the members it covers stay until
        `put_out_banned` (the hub makes the ban durable in between)."""
        room = self._member_room(name, nick)
        self._require_moderator(room, nick, "ban")
        ban = self._make_ban(room, mask, mask_key, by=nick)
        if any(b.kind is ban.kind and b.value == ban.value for b in room.bans):
            return room  # already banned: nothing changes
        if len(room.bans) >= self.max_bans_per_room:
            raise RoomError(
                Code.QUOTA,
                f"{room.name} has {len(room.bans)} bans, the most a room may have; unban some first",
            )
        room.bans.append(ban)
        return room

    def put_out_banned(self, room: Room) -> list[str]:
        """Remove the members of `room` its bans cover; their nicks as shown."""
        out = [
            shown
            for folded, shown in list(room.members.items())
            if self.banned(room, folded, self._people[folded].key)
        ]
        for shown in out:
            self._remove(room, fold_nick(shown))
        return out

    @staticmethod
    def _make_ban(room: Room, mask: str, mask_key: bytes | None, *, by: str) -> Ban:
        if is_pattern(mask):
            return Ban(BanKind.PATTERN, fold_nick(mask), mask, by)
        if mask_key:
            if mask_key == room.owner:
                raise RoomError(Code.NOT_OPERATOR, f"the owner of {room.name} cannot be banned")
            return Ban(BanKind.KEY, mask_key, mask, by)
        return Ban(BanKind.PATTERN, fold_nick(mask), mask, by)

    def unban(self, name: str, nick: str, mask: str) -> Room:
        """Lift the ban whose mask (as the ban list shows it) is `mask`, case-insensitively."""
        room = self._member_room(name, nick)
        self._require_moderator(room, nick, "unban")
        for ban in room.bans:
            if fold_nick(ban.shown) == fold_nick(mask):
                room.bans.remove(ban)
                return room
        raise RoomError(Code.INVALID, f"{room.name} has no ban on {mask}")

    def ban_list(self, name: str, nick: str) -> tuple[Room, tuple[Ban, ...]]:
        room = self._member_room(name, nick)
        self._require_moderator(room, nick, "see its bans")
        return room, tuple(room.bans)

    def op(self, name: str, nick: str, target: str, target_key: bytes | None) -> Room:
        """The owner makes `target` (registered to `target_key`) an operator."""
        room = self._owner_room(name, nick, "name operators")
        room.operators.add(self._registered(target, target_key))
        return room

    def deop(self, name: str, nick: str, target: str, target_key: bytes | None) -> Room:
        room = self._owner_room(name, nick, "remove operators")
        key = self._registered(target, target_key)
        if key not in room.operators:
            raise RoomError(Code.INVALID, f"{target} is not an operator of {room.name}")
        room.operators.discard(key)
        return room

    def transfer(self, name: str, nick: str, target: str, target_key: bytes | None) -> Room:
        """The owner hands the room to `target`'s key; the old owner stays an operator."""
        room = self._owner_room(name, nick, "hand it over")
        key = self._registered(target, target_key)
        if key == room.owner:
            return room
        self._check_owns_fewer(key, f"{target} owns")
        room.operators.add(room.owner)
        room.operators.discard(key)
        room.owner = key
        # The new owner can never be banned: a ban on their key would otherwise lie dormant.
        room.bans = [b for b in room.bans if not (b.kind is BanKind.KEY and b.value == key)]
        return room

    # -- checks -----------------------------------------------------------------------

    def _member_room(self, name: str, nick: str) -> Room:
        room = self.room(name)
        if fold_nick(nick) not in room.members:
            raise RoomError(Code.NOT_IN_ROOM, f"you are not in {room.name}")
        return room

    def _require_moderator(self, room: Room, nick: str, what: str) -> None:
        if not room.registered:
            raise RoomError(Code.NOT_OPERATOR, f"{room.name} is not registered: nobody may {what} there")
        if not room.moderator(self._people[fold_nick(nick)].key):
            raise RoomError(Code.NOT_OPERATOR, f"only the owner and operators of {room.name} may {what}")

    def _owner_room(self, name: str, nick: str, what: str) -> Room:
        room = self._member_room(name, nick)
        key = self._people[fold_nick(nick)].key
        if not room.registered or not key or key != room.owner:
            raise RoomError(Code.NOT_OPERATOR, f"only the owner of {room.name} may {what}")
        return room

    @staticmethod
    def _registered(target: str, key: bytes | None) -> bytes:
        if not key:
            raise RoomError(Code.NO_SUCH_USER, f"nobody is registered as {target}")
        return key


def search(rooms: Iterable[RoomSummary], pattern: str) -> tuple[list[RoomSummary], bool]:
    """The `rooms` whose name matches the case-insensitive pattern `pattern` (`*`, `?`;
    "" = all), sorted by name, at most `MAX_ROOMS_LISTED`; and whether the list was cut.
    Takes no lock: the hub calls it on a copy (`Rooms.summaries`), outside its own."""
    folded = fold_room(pattern or "*")
    found = sorted((room for room in rooms if matches(folded, fold_room(room.name))), key=_by_name)
    return found[:MAX_ROOMS_LISTED], len(found) > MAX_ROOMS_LISTED


def _by_name(room: RoomSummary) -> str:
    return fold_room(room.name)
