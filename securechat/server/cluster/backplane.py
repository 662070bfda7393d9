"""The Redis backplane: what makes N server processes one server (docs/operations.md,
"A cluster").

Redis carries only what can be rebuilt: room fan-out, who serves which nick, node
liveness. What must last (nicks' keys, whispers, rooms) is in the shared PostgreSQL
store. Three threads per node, none of them a session's:

- the **publisher** owns the queue of outgoing work: room batches and presence (one Lua
  call each, which assigns the room's offset, appends to the room's capped stream and
  publishes, all atomically: a total order per room), frames for sessions on other
  nodes, device-list news; it pipelines whatever queued meanwhile into one round trip. A session
  thread never waits on Redis for a room line.
- the **subscriber** owns the pub/sub connection: it subscribes, waits for the
  confirmation, and only then reads each room's position and fills the gap from the
  stream (subscribing after reading would lose what was published in between); then it
  hands every room batch to the hub in offset order (order.py) and every frame for a
  local session to it.
- the **lease** thread refreshes this node's lease every third of its length. A node that
  cannot refresh for `FENCE_AFTER` of the lease fences itself (its sessions are closed
  with a retryable error, logins refused) before the lease can expire, so that two
  nodes never both serve one guest nick. It also reaps: nicks claimed by nodes whose
  lease expired are freed. It notices a Redis that restarted empty (a new or missing
  epoch) and registers this node again, with the nicks it serves.

Claims (`claim`, `release`) are the login path's: each is one Redis round trip on the
session's reader thread (a login needs the answer), one at a time per node.

Redis must not restore old data under the same epoch (run it without persistence, as
docs/operations.md says): a room's offsets going back would make the nodes take new
batches for ones they delivered. A node that sees one go back by more than a stream's
length says so and starts the room again from there rather than stay silent.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from ...protocol import fold_nick
from . import ClusterUnavailable
from .order import RoomOrder, Verdict
from .scripts import CLAIM, CLAIM_DEVICE, PUBLISH, RELEASE_DEVICE

__all__ = ["FENCE_AFTER", "Backplane", "BackplaneHooks", "ClusterUnavailable"]

log = logging.getLogger(__name__)

#: The part of its lease after which a node that could not refresh it fences itself:
#: early enough that its sessions are closed before the lease expires and another node
#: may hand out its nicks, with a margin for a stalled thread.
FENCE_AFTER = 0.6
#: Redis round trips of the login path and of the threads: a Redis that does not answer
#: within this is treated as down (the lease then runs out, and the node fences).
_REDIS_TIMEOUT = 2.0
#: What starts a `to:NODE` message's address when it is for every session of a person
#: rather than one mailbox ("~" is in no nick).
_PERSON = "~"
#: What follows a room batch's origin when the batch is room news, not frames.
_NEWS = b"news"
#: What follows a `joined` batch's origin, then the identity key (hex) its member holds.
_KEY = b"key"
#: What starts a `to:NODE` message's address when it says the session of that mailbox
#: logged in on the sending node ("^" is in no nick); its body is when (wall clock).
_REPLACED = "^"
#: Publisher items taken into one pipeline at most.
_BATCH = 256


@dataclass(frozen=True)
class BackplaneHooks:
    """What the backplane calls on its node. Each hook says which thread calls it."""

    #: Consecutive batches of room `room` (folded), in the room's order, each: the encoded
    #: frames, the node that published them, whether that is this node, and (a
    #: `joined`) the identity key its member holds, b"" for a guest. The subscriber
    #: thread.
    deliver_lines: Callable[[str, list[tuple[bytes, str, bool, bytes]]], None]
    #: News of folded `room` (server/roomnews.py), in the room's order: the news, the
    #: node that published it, whether that is this node, and whether it is live (False:
    #: the room's latest state read from Redis after a subscription, not to be
    #: announced). Raises `ValueError` for news it cannot read. The subscriber thread.
    room_news: Callable[[str, bytes, str, bool, bool], None]
    #: After each subscription: who is in which room on the other live nodes, each
    #: (folded room, nick, node, the identity key it holds or b""), all at once (later
    #: changes come as `joined`/`left` frames in `deliver_lines`). The subscriber thread.
    remote_members: Callable[[list[tuple[str, str, str, bytes]]], None]
    #: A frame another node sent for the session reading mailbox `box` ("nick" or
    #: "nick/device") here. The subscriber thread.
    push: Callable[[str, bytes], None]
    #: A frame another node sent for every session of folded `nick` here. The subscriber
    #: thread.
    push_person: Callable[[str, bytes], None]
    #: This node can no longer prove it is alive: close every session (retryable). Its
    #: logins are refused (`claim` raises) until its lease is held again. The lease thread.
    fenced: Callable[[], None]
    #: Redis lost this node's claim on `nick` (it restarted empty and another node took
    #: the nick first): close this node's sessions of it. The lease thread.
    lost_nick: Callable[[str], None]
    #: Node `node` died without a goodbye: pushes it had not sent yet (a whisper
    #: committed just before it died) are lost, so the sessions here should be handed
    #: what waits for them again. The subscriber thread.
    node_gone: Callable[[str], None]
    #: The session reading mailbox `box` logged in again on another node at `since`
    #: (wall clock): close this node's sessions of it that logged in before, as a
    #: single server replaces a stale session at a reconnect. The subscriber thread.
    replaced: Callable[[str, float], None]
    #: Folded `nick`'s device list changed (on any node): forget what is cached of it,
    #: and close this node's sessions of devices it no longer names. The subscriber thread.
    devices_changed: Callable[[str], None]
    #: The subscription was made again: news may have been missed meanwhile, so what is
    #: held of other nodes (cached device lists, their members, whether one died) is to
    #: be forgotten or checked again. The subscriber thread.
    resubscribed: Callable[[], None]
    #: This node registered under a new epoch (Redis lost its data): tell the others
    #: again who is in each room here (`publish_presence`). The lease thread.
    registered: Callable[[], None]


class Backplane:
    """One node's link to the cluster's Redis (see the module docstring).

    `start` connects and registers (raises `ClusterUnavailable` if Redis cannot be
    reached), then starts the three threads; `stop` ends them. `publish_lines`, `push`
    and `release` only queue (any thread); `claim` and `serves_others` make one round
    trip on the caller's thread.
    """

    def __init__(
        self,
        url: str,
        hooks: BackplaneHooks,
        *,
        node: str | None = None,
        lease: float = 6.0,
        stream_length: int = 1000,
        prefix: str = "sc:",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node or os.urandom(6).hex()
        self._hooks = hooks
        self._lease = lease
        self._stream_length = stream_length
        self._p = prefix
        self._monotonic = monotonic
        self._redis = redis.Redis.from_url(
            url, socket_timeout=_REDIS_TIMEOUT, socket_connect_timeout=_REDIS_TIMEOUT
        )
        # The lease thread's own connection, whose round trips are bounded by a sixth of
        # the lease: a Redis that hangs must not hold the thread past the moment it has
        # to fence (`_leaser`).
        self._lease_redis = redis.Redis.from_url(
            url, socket_timeout=lease / 6, socket_connect_timeout=lease / 6
        )
        self._publish_script = self._redis.register_script(PUBLISH)
        self._claim_script = self._redis.register_script(CLAIM)
        self._claim_device_script = self._redis.register_script(CLAIM_DEVICE)
        self._release_device_script = self._redis.register_script(RELEASE_DEVICE)
        self._rooms_channel = f"{prefix}rooms"
        self._my_channel = f"{prefix}to:{self.node}"
        # News for every node: "gone\tNODE" (a node died), "devices\tNICK" (a person's
        # device list changed: every node's cached copy is stale, whoever it serves).
        self._all_channel = f"{prefix}all"
        self._stopping = threading.Event()
        # Outgoing work for the publisher: ("lines", room, batch), ("joined"/"left",
        # "room\tnick", frame), ("state"/"news", room, news), ("push", to, frame),
        # ("devices", nick, b""), ("stop", ...).
        # A SimpleQueue is safe for any thread.
        self._out: queue.SimpleQueue[tuple[str, str, bytes]] = queue.SimpleQueue()
        # The nicks this node serves: folded nick -> (sessions holding it, identity key
        # hex or "" for a guest). Guarded by `_lock`.
        self._claims: dict[str, tuple[int, str]] = {}
        # The devices this node serves: (identity key hex, device field) -> the tokens of
        # its sessions here (more than one only while a reconnect replaces a stale one;
        # by token, so that a session fenced earlier cannot give back a later one's).
        # Guarded by `_lock`, as are the next two.
        self._devices: dict[tuple[str, str], set[int]] = {}
        self._tokens = itertools.count(1)
        # Devices whose release Redis did not take: tried again by the lease thread.
        self._unreleased: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        # Held by `claim` and `release` across their Redis round trip (taken before
        # `_lock`, never under it): one change of this node's claims at a time.
        self._claiming = threading.Lock()
        # The epoch this node registered under. Written by `start` and the lease thread,
        # read bare by the others (a str swap is atomic; a stale read costs one retry).
        self._epoch = ""
        # Whether this node fenced itself, and when its lease was last refreshed. Owned
        # by the lease thread; `claim` reads `_fenced` bare (a stale read admits or
        # refuses one login a refresh early).
        self._fenced = False
        self._last_refresh = 0.0
        # Room order, and whether it has followed Redis since a first subscription:
        # owned by the subscriber thread.
        self._order = RoomOrder()
        self._following = False
        # Line batches read and not yet handed to the hub: consecutive ones of one room,
        # handed over together (`_hand_over`) once something else comes or nothing more
        # has arrived. Owned by the subscriber thread.
        self._held: list[tuple[str, bytes, str, bool, bytes]] = []
        # Set by the subscriber once it is subscribed (and again after each reconnect).
        self.subscribed = threading.Event()
        #: How often the subscription was lost (Redis down, or it dropped this node for
        #: falling behind) and made again. Written by the subscriber thread only.
        self.subscriptions_lost = 0
        self._threads: list[threading.Thread] = []
        self._stopped = False  # guarded by `_lock`: `stop` runs once

    # -- the node's life --------------------------------------------------------------

    def start(self) -> None:
        try:
            self._check_no_persistence()
            self._register()
            self._refresh()
        except redis.RedisError as exc:
            raise ClusterUnavailable(f"cannot reach the cluster's Redis: {exc}") from None
        for name, target in (
            ("publisher", self._publisher),
            ("subscriber", self._subscriber),
            ("lease", self._leaser),
        ):
            thread = threading.Thread(target=target, name=f"securechat-cluster-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _check_no_persistence(self) -> None:
        """Raise `ClusterUnavailable` if this Redis would bring back old data after a
        restart (RDB snapshots, or the append-only file): under the same epoch, its
        rooms' offsets would go back and its claims and members come back stale. A
        Redis whose CONFIG is not open to clients (a managed one) is checked only for
        the append-only file, which INFO shows."""
        fix = "run it with --save '' --appendonly no (docs/operations.md, \"A cluster\")"
        if int(self._redis.info("persistence").get("aof_enabled", 0)):
            raise ClusterUnavailable(f"the cluster's Redis keeps an append-only file (appendonly yes): {fix}")
        try:
            save = _text(self._redis.config_get("save").get("save", ""))
        except redis.ResponseError:
            return
        if save.strip():
            raise ClusterUnavailable(
                f"the cluster's Redis saves snapshots (save {save}), it must run without persistence: {fix}"
            )

    def stop(self) -> None:
        """End the threads and give up this node's lease and claims (a clean stop: the
        others need not wait for the lease to run out). A second call does nothing."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        # The publisher sends what was queued before this (the sessions' last `left`s),
        # then ends; the other threads end on the flag.
        self._out.put(("stop", "", b""))
        if self._threads:
            self._threads[0].join(_REDIS_TIMEOUT * 3)
        self._stopping.set()
        for thread in self._threads[1:]:
            thread.join(_REDIS_TIMEOUT * 3)
        try:
            with self._lock:
                nicks = list(self._claims)
                self._claims.clear()
                devices = list(self._devices)
                self._devices.clear()
            pipe = self._redis.pipeline(transaction=False)
            for nick in nicks:
                pipe.hdel(self._key("nick", nick), self.node)
            for hexkey, field in devices:
                self._release_device_script(
                    keys=[self._key("devices", hexkey)], args=[self.node, field], client=pipe
                )
            pipe.delete(
                self._key("nicks-of", self.node),
                self._key("devices-of", self.node),
                self._key("node", self.node),
            )
            pipe.execute()
            self._forget_node(self.node)  # its members in Redis, and the news to the others
        except redis.RedisError as exc:
            log.info("cluster: could not give up this node's lease at stop: %s", exc)
        self._redis.close()
        self._lease_redis.close()

    # -- the login path ----------------------------------------------------------------

    def claim(self, nick: str, key: bytes) -> bool:
        """Claim folded `nick` for a session of this node proving identity `key` (b"" for
        a guest): True if no other live node serves it, or only for the same identity.
        Counted per session: each True is matched by one `release`. Raises
        `ClusterUnavailable` (retryable) if Redis does not answer or the node is fenced."""
        if self._fenced:
            raise ClusterUnavailable("this node has lost the cluster for now")
        hexkey = key.hex()
        # One claim or release at a time on this node, across its Redis round trip: a
        # release's HDEL arriving after a newer claim's HSET would undo that claim.
        with self._claiming:
            with self._lock:
                held = self._claims.get(nick)
                if held is not None and held[1] == hexkey:
                    self._claims[nick] = (held[0] + 1, hexkey)
                    return True
            try:
                ok = self._claim_script(
                    keys=[self._key("nick", nick), self._key("nicks-of", self.node)],
                    args=[self.node, hexkey, self._key("node", "")],
                )
            except redis.RedisError as exc:
                raise ClusterUnavailable(f"the cluster's Redis did not answer: {exc}") from None
            if not ok:
                return False
            with self._lock:
                count, _ = self._claims.get(nick, (0, hexkey))
                self._claims[nick] = (count + 1, hexkey)
            return True

    def release(self, nick: str) -> None:
        """A session holding folded `nick` ended: when it was this node's last one, the
        nick is freed in Redis (one round trip, on the caller's thread: the session's
        reader as it ends). A Redis that does not answer leaves the claim to the reaper
        (once this node's lease runs out) or to the next fence's clean-up."""
        with self._claiming:
            with self._lock:
                held = self._claims.get(nick)
                if held is None:
                    return
                if held[0] > 1:
                    self._claims[nick] = (held[0] - 1, held[1])
                    return
                del self._claims[nick]
            try:
                pipe = self._redis.pipeline(transaction=False)
                pipe.hdel(self._key("nick", nick), self.node)
                pipe.srem(self._key("nicks-of", self.node), self._key("nick", nick))
                pipe.execute()
            except redis.RedisError as exc:
                log.info("cluster: could not free %s in Redis: %s", nick, exc)

    def claim_device(self, key: bytes, device: str, most: int) -> int | None:
        """Count device `device` (its id; "" for the one holding identity `key`) of the
        person proving `key` as online here for one session: its token, or None if the
        person has `most` other devices online on the live nodes (this one included).
        Each token is given back once, by `release_device`. One round trip on the
        caller's thread. Raises `ClusterUnavailable`."""
        entry = (key.hex(), "d" + device)
        with self._claiming:
            try:
                ok = self._claim_device_script(
                    keys=[self._key("devices", entry[0]), self._key("devices-of", self.node)],
                    args=[self.node, entry[1], most, self._key("node", "")],
                )
            except redis.RedisError as exc:
                raise ClusterUnavailable(f"the cluster's Redis did not answer: {exc}") from None
            if not ok:
                return None
            with self._lock:
                token = next(self._tokens)
                self._devices.setdefault(entry, set()).add(token)
                self._unreleased.discard(entry)
            return token

    def release_device(self, key: bytes, device: str, token: int) -> None:
        """The session holding `token` (`claim_device`) of device `device` of the person
        proving `key` ended: when it was this node's last one of the device, the device
        is no longer counted as online here (one round trip; one Redis does not take is
        tried again by the lease thread). A token a fence took back already: nothing."""
        entry = (key.hex(), "d" + device)
        with self._claiming:
            with self._lock:
                tokens = self._devices.get(entry)
                if tokens is None or token not in tokens:
                    return
                tokens.discard(token)
                if tokens:
                    return
                del self._devices[entry]
            self._release_devices([entry])

    def _release_devices(self, entries: list[tuple[str, str]]) -> None:
        """Tell Redis these devices are no longer online here (unless taken over by
        another node meanwhile); those it does not take wait in `_unreleased`."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            for hexkey, field in entries:
                pipe.evalsha(
                    self._release_device_script.sha, 1, self._key("devices", hexkey), self.node, field
                )
            pipe.execute()
        except redis.exceptions.NoScriptError:
            self._redis.script_load(RELEASE_DEVICE)
            self._defer_release(entries)
        except redis.RedisError as exc:
            log.info("cluster: could not count %d device(s) as gone in Redis: %s", len(entries), exc)
            self._defer_release(entries)

    def _defer_release(self, entries: list[tuple[str, str]]) -> None:
        with self._lock:
            self._unreleased.update(e for e in entries if e not in self._devices)

    def elsewhere(self, nick: str) -> bool:
        """Whether another live node serves folded `nick` (one round trip; any thread).
        Raises `ClusterUnavailable`."""
        try:
            nodes = [_text(n) for n in self._redis.hkeys(self._key("nick", nick))]
        except redis.RedisError as exc:
            raise ClusterUnavailable(str(exc)) from None
        return any(n != self.node for n in nodes)

    def holder(self, nick: str) -> bytes | None:
        """The identity key (b"" for a guest) of whoever another live node serves as
        folded `nick`, None if no other node does (one round trip; any thread). Raises
        `ClusterUnavailable`."""
        try:
            owners = self._redis.hgetall(self._key("nick", nick))
        except redis.RedisError as exc:
            raise ClusterUnavailable(str(exc)) from None
        for node, key in owners.items():
            if _text(node) != self.node:
                return bytes.fromhex(_text(key))
        return None

    # -- outgoing ------------------------------------------------------------------------

    def publish_lines(self, room: str, batch: bytes) -> None:
        """Queue a batch of folded `room`'s lines (encoded frames) for the room's total
        order: every node, this one too, gets it back from the subscriber in that
        order. Any thread; never blocks on Redis."""
        self._out.put(("lines", room, batch))

    def publish_presence(self, room: str, nick: str, joined: bool, frame: bytes, key: bytes) -> None:
        """Queue news that `nick`, a member on this node holding identity `key` (b"" a
        guest), entered (`joined`) or left folded `room`: the `joined`/`left` frame goes
        out in the room's order, and Redis keeps who is in the room for nodes that start
        later. Any thread; never blocks."""
        self._out.put(("joined" if joined else "left", f"{room}\t{nick}\t{key.hex()}", frame))

    def publish_news(self, room: str, news: bytes, keep: bool) -> None:
        """Queue news of folded `room` (server/roomnews.py) for the room's order, like
        `publish_lines`; `keep`: it is the room's new shared state, which Redis keeps for
        nodes that subscribe later. Any thread; never blocks."""
        self._out.put(("state" if keep else "news", room, news))

    def push(self, box: str, frame: bytes) -> None:
        """Queue `frame` for mailbox `box`'s session on the other nodes serving its nick (a
        whisper or a status for a user logged in elsewhere). Any thread."""
        self._out.put(("push", box, frame))

    def push_person(self, nick: str, frame: bytes) -> None:
        """Queue `frame` for every session of folded `nick` on the other nodes. Any thread."""
        self._out.put(("push", _PERSON + nick, frame))

    def replaced(self, box: str) -> None:
        """Queue news for the other nodes serving mailbox `box`'s nick that its session
        logged in here now: theirs of it are stale (`BackplaneHooks.replaced`). Any thread."""
        self._out.put(("push", _REPLACED + box, repr(time.time()).encode()))

    def devices_changed(self, nick: str) -> None:
        """Queue news for every node that folded `nick`'s device list changed (each
        forgets its cached copy and closes its sessions of removed devices). Any thread."""
        self._out.put(("devices", nick, b""))

    # -- the publisher thread ------------------------------------------------------------

    def _publisher(self) -> None:
        pending: list[tuple[str, str, bytes]] = []
        failures = 0
        stopping = False
        while True:
            if not pending and not stopping:
                pending.append(self._out.get())
            while len(pending) < _BATCH and not stopping:
                try:
                    pending.append(self._out.get_nowait())
                except queue.Empty:
                    break
            if any(item[0] == "stop" for item in pending):
                stopping = True  # what was queued before it goes out first
                pending = [item for item in pending if item[0] != "stop"]
            if not pending:
                if stopping:
                    return
                continue
            try:
                pending = self._send(_merged(pending))
            except redis.RedisError as exc:
                failures += 1
                if failures == 1:
                    log.warning("cluster: publishing failed, holding %d items: %s", len(pending), exc)
                if (stopping and failures > 3) or self._stopping.is_set():
                    return  # a stopping node gives up; its lease runs out for the others
                self._stopping.wait(min(0.05 * failures, 1.0))
                continue
            failures = 0

    def _send(self, items: list[tuple[str, str, bytes]]) -> list[tuple[str, str, bytes]]:
        """One round trip for the room batches and releases, one more to find where the
        pushed frames go and send them. Returns what is to be sent again (pushes whose
        second round trip failed). Raises `redis.RedisError` if the first failed: the
        caller sends everything again. Nothing is lost that way; but a connection lost
        in the middle of the first may have published some room batches already, which
        then go out twice, with two offsets (their lines shown twice: room lines are
        not acknowledged, and this is the one case they repeat)."""
        pipe = self._redis.pipeline(transaction=False)
        pushes: list[tuple[str, bytes]] = []
        published: list[int] = []  # where in the pipeline's results each room batch is
        commands = 0
        origin = self.node.encode() + b"\n"
        origin_news = self.node.encode() + b"\t" + _NEWS + b"\n"
        for kind, name, data in items:
            if kind in ("lines", "joined", "left", "state", "news"):
                room, _, rest = name.partition("\t")
                nick, _, keyhex = rest.partition("\t")
                head = origin
                if kind in ("state", "news"):
                    head = origin_news
                elif kind == "joined" and keyhex:
                    head = self.node.encode() + b"\t" + _KEY + b"\t" + keyhex.encode() + b"\n"
                published.append(commands)
                commands += 1
                # EVALSHA itself, not the Script object: a pipeline holding a Script
                # asks Redis first whether it has it (one more round trip per batch).
                # `_register` loads it; one Redis lost (NOSCRIPT) is loaded again below.
                pipe.evalsha(
                    self._publish_script.sha,
                    4,
                    self._key("off", room),
                    self._key("log", room),
                    self._key("epoch"),
                    self._key("state", room),
                    self._rooms_channel,
                    head + data,
                    self._stream_length,
                    room,
                    "1" if kind == "state" else "",
                )
                if kind in ("joined", "left"):
                    commands += 2
                    entry = f"{room}\t{nick}"
                    if kind == "joined":
                        pipe.hset(
                            self._key("members", room), fold_nick(nick), f"{self.node}\t{nick}\t{keyhex}"
                        )
                        pipe.sadd(self._key("rooms-of", self.node), entry)
                    else:
                        pipe.hdel(self._key("members", room), fold_nick(nick))
                        pipe.srem(self._key("rooms-of", self.node), entry)
            elif kind == "devices":
                commands += 1
                pipe.publish(self._all_channel, f"devices\t{name}".encode())
            else:
                pushes.append((name, data))
        for box, _ in pushes:
            pipe.hkeys(self._key("nick", box.lstrip(_PERSON + _REPLACED).split("/", 1)[0]))
        try:
            results = pipe.execute()
        except redis.exceptions.NoScriptError:
            # Redis lost its scripts (restarted, or SCRIPT FLUSH): the batches did not go
            # out (unless another node loaded the script again in the middle of this
            # pipeline: those go out twice, as with a connection lost mid-pipeline). The
            # rest of the pipeline did, and is the same again when sent again.
            self._redis.script_load(PUBLISH)
            raise
        if any(results[i] is None for i in published):
            # No epoch: Redis restarted empty. The lease thread registers this node
            # again within a third of the lease; the lines go out under the new epoch.
            raise redis.RedisError("the cluster's Redis lost its data: waiting to register again")
        if not pushes:
            return []
        owners = results[len(results) - len(pushes) :]
        pipe = self._redis.pipeline(transaction=False)
        for (box, frame), nodes in zip(pushes, owners, strict=True):
            for node in nodes:
                node_id = _text(node)
                if node_id != self.node:
                    pipe.publish(self._key("to", node_id), box.encode() + b"\n" + frame)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            # The room batches went out: only the pushes are tried again (a push sent
            # twice is a frame the client drops by its id).
            log.info("cluster: pushing to other nodes failed, trying again: %s", exc)
            return [("push", box, frame) for box, frame in pushes]
        return []

    # -- the subscriber thread -----------------------------------------------------------

    def _subscriber(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            pubsub = self._redis.pubsub()  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self._rooms_channel, self._my_channel, self._all_channel)
                confirmed = 0
                deadline = self._monotonic() + _REDIS_TIMEOUT
                while confirmed < 3:
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None and message["type"] == "subscribe":
                        confirmed += 1
                    elif self._monotonic() > deadline:
                        raise redis.TimeoutError("no subscribe confirmation")
                # Subscribed: whatever is published from now on reaches us. Only now
                # read where each room is, and fill what was missed before. News sent
                # while this node was not subscribed is lost: what it holds of other
                # nodes may be stale, and is read again.
                if self._following:
                    self._hooks.resubscribed()
                self._catch_up()
                self.subscribed.set()
                failures = 0
                while not self._stopping.is_set():
                    # While line batches are held, only what has arrived already is
                    # read: consecutive batches of one room then reach each member in
                    # one write (`_held`), and none waits for the next to come.
                    message = pubsub.get_message(timeout=0.0 if self._held else 0.5)
                    if message is None:
                        self._guarded(self._hand_over)
                    elif message["type"] == "message":
                        self._guarded(self._on_message, message["channel"], message["data"])
                        if len(self._held) >= _BATCH:
                            self._guarded(self._hand_over)
            except redis.RedisError as exc:
                self._guarded(self._hand_over)  # counted as delivered: they must not be lost
                self.subscribed.clear()
                self.subscriptions_lost += 1
                failures += 1
                if failures == 1:
                    log.warning("cluster: subscription lost, subscribing again: %s", exc)
                self._stopping.wait(min(0.05 * failures, 1.0))
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def _catch_up(self) -> None:
        """After (re)subscribing: at the first subscription, every existing room's
        position is where this node starts; after that, every room (known or new) gets
        what it missed from its stream. A new epoch resets the order first (every room
        counts from 1 again)."""
        epoch = self._redis.get(self._key("epoch"))
        current = _text(epoch) if epoch is not None else ""
        if current != self._order.epoch:
            self._order.reset(current)
        prefix = self._key("off", "")
        names = [_text(k)[len(prefix) :] for k in self._redis.scan_iter(match=prefix + "*", count=500)]
        values = self._redis.mget([prefix + name for name in names]) if names else []
        for room, value in zip(names, values, strict=True):
            if value is None:
                continue
            last = int(_text(value))
            if not self._following:
                self._order.baseline(room, last)
            elif last >= self._order.expected(room):
                self._fill(room, self._order.expected(room), last)
            elif last + 1 < self._order.expected(room):
                log.warning("cluster: %s went back to offset %d: taking it from there", room, last)
                self._order.skip_to(room, last + 1)
        self._hand_over()
        self._load_members()
        self._load_states()
        self._following = True

    def _load_members(self) -> None:
        """After each subscription: who is in which room on the other live nodes."""
        prefix = self._key("members", "")
        members: list[tuple[str, str, str, bytes]] = []
        alive: dict[str, bool] = {}
        for raw in self._redis.scan_iter(match=prefix + "*", count=500):
            room = _text(raw)[len(prefix) :]
            for value in self._redis.hvals(raw):
                node, _, rest = _text(value).partition("\t")
                nick, _, keyhex = rest.partition("\t")
                if node not in alive:
                    alive[node] = node != self.node and bool(self._redis.exists(self._key("node", node)))
                if alive[node]:
                    members.append((room, nick, node, bytes.fromhex(keyhex)))
        self._hooks.remote_members(members)

    def _load_states(self) -> None:
        """After each subscription: every room's latest shared state (roomnews.py)."""
        prefix = self._key("state", "")
        names = [_text(k) for k in self._redis.scan_iter(match=prefix + "*", count=500)]
        for key, value in zip(names, self._redis.mget(names) if names else [], strict=True):
            if value is None:
                continue
            head, _, news = _bytes(value).partition(b"\n")
            node = head.decode(errors="replace").partition("\t")[0]
            try:
                self._hooks.room_news(key[len(prefix) :], news, node, node == self.node, False)
            except ValueError as exc:
                log.warning("cluster: a room's state in Redis could not be read (%s); skipped", exc)

    def _guarded(self, handle: Callable[..., None], *args: bytes) -> None:
        """`handle(*args)`, where one bad message must not end the subscription."""
        try:
            handle(*args)
        except redis.RedisError:
            raise
        except Exception:
            log.exception("cluster: a message from Redis could not be handled; skipped")

    def _hand_over(self) -> None:
        """Hand the held line batches (all of one room, in its order) to the hub."""
        if self._held:
            room = self._held[0][0]
            segments = [(frames, node, mine, key) for _, frames, node, mine, key in self._held]
            self._held.clear()
            self._hooks.deliver_lines(room, segments)

    def _on_message(self, channel: bytes, data: bytes) -> None:
        head, _, body = data.partition(b"\n")
        if channel.decode() != self._rooms_channel:
            self._hand_over()  # what was held goes first
        if channel.decode() == self._my_channel:
            to = head.decode()
            if to.startswith(_REPLACED):
                try:
                    since = float(body)
                except ValueError:
                    log.warning("cluster: a malformed replacement notice, ignored")
                    return
                self._hooks.replaced(to.removeprefix(_REPLACED), since)
            elif to.startswith(_PERSON):
                self._hooks.push_person(to.removeprefix(_PERSON), body)
            else:
                self._hooks.push(to, body)
            return
        if channel.decode() == self._all_channel:
            kind, _, name = head.decode().partition("\t")
            if kind == "gone" and name != self.node:
                self._hooks.node_gone(name)
            elif kind == "devices":
                self._hooks.devices_changed(name)
            return
        try:
            epoch, offset_text, room = head.decode().split("\t")
            offset = int(offset_text)
        except ValueError:
            log.warning("cluster: a malformed room batch on the channel, ignored")
            return
        offer = self._order.offer(epoch, room, offset)
        if offer.verdict is Verdict.RESET:
            log.info("cluster: Redis has a new epoch: room order starts again")
            self._order.reset(epoch)
            offer = self._order.offer(epoch, room, offset)
        if offer.verdict is Verdict.DUPLICATE:
            if offset + self._stream_length >= self._order.expected(room):
                return  # read already, from the channel or the stream
            # Far behind anything the stream could repeat: the room's offsets went back
            # (a Redis restored from old data). Its count starts again here.
            log.warning("cluster: %s went back to offset %d: taking it from there", room, offset)
            self._order.skip_to(room, offset)
        if offer.verdict is Verdict.GAP:
            self._fill(room, offer.missing_from, offset - 1)
            if self._order.expected(room) > offset:
                return  # the fill delivered this one too
        self._deliver(room, body)
        self._order.delivered(room, offset)

    def _deliver(self, room: str, batch: bytes) -> None:
        """Hand a room batch ("ORIGIN\n" then frames, or "ORIGIN\tnews\n" then news) to
        the hub."""
        head, _, body = batch.partition(b"\n")
        origin, _, tag = head.partition(b"\t")
        node = origin.decode(errors="replace")
        if self._held and (tag == _NEWS or self._held[0][0] != room):
            self._hand_over()
        if tag == _NEWS:
            try:
                self._hooks.room_news(room, body, node, node == self.node, True)
            except ValueError as exc:
                log.warning("cluster: news of %s could not be read (%s); skipped", room, exc)
            return
        key = b""
        if tag.startswith(_KEY + b"\t"):
            try:
                key = bytes.fromhex(tag[len(_KEY) + 1 :].decode())
            except ValueError:
                log.warning("cluster: a member's key in %s could not be read; shown as a guest's", room)
        self._held.append((room, body, node, node == self.node, key))

    def _fill(self, room: str, first: int, last: int) -> None:
        """Deliver `room`'s batches `first`..`last` from its stream, in order."""
        entries = self._redis.xrange(self._key("log", room), f"{first}-0", f"{last}-0") or []
        for entry_id, fields in entries:
            offset = int(_text(entry_id).split("-")[0])
            expected = self._order.expected(room)
            if offset < expected:
                continue
            if offset > expected:
                log.warning("cluster: %s lost batches %d-%d (trimmed)", room, expected, offset - 1)
                self._order.skip_to(room, offset)
            self._deliver(room, _bytes((fields or {}).get(b"d")))
            self._order.delivered(room, offset)
        if self._order.expected(room) <= last:
            log.warning("cluster: %s lost batches up to %d (trimmed from its stream)", room, last)
            self._order.skip_to(room, last + 1)

    # -- the lease thread ----------------------------------------------------------------

    def _leaser(self) -> None:
        """Refresh the lease every third of it, and fence once `FENCE_AFTER` of it went by
        without a refresh. It wakes every sixth of the lease and each Redis round trip is
        bounded by a sixth, so the fence comes at most about a third of the lease late:
        before the lease runs out. The fence is checked before each refresh: a node that
        was frozen (SIGSTOP, a paused VM) past its lease fences on waking, even though
        its next refresh would work, since the others may have taken its nicks meanwhile."""
        next_refresh = self._monotonic()
        while not self._stopping.wait(self._lease / 6):
            try:
                self._lease_round(next_refresh)
            except redis.RedisError as exc:
                log.debug("cluster: lease refresh failed: %s", exc)
            except Exception:  # a hook's failure must not end the node's lease
                log.exception("cluster: the lease thread's round failed")
            if self._monotonic() >= next_refresh:
                next_refresh = self._monotonic() + self._lease / 3

    def _lease_round(self, next_refresh: float) -> None:
        """One wake-up of the lease thread: fence if due, then refresh if due."""
        if not self._fenced and self._monotonic() - self._last_refresh > self._lease * FENCE_AFTER:
            log.warning(
                "cluster: lease not refreshed for %.1f s: fencing this node",
                self._monotonic() - self._last_refresh,
            )
            self._fenced = True
            with self._lock:
                self._claims.clear()  # its sessions are being closed
                self._devices.clear()
            self._hooks.fenced()
        if self._monotonic() < next_refresh:
            return
        epoch = self._lease_redis.get(self._key("epoch"))
        if epoch is None or _text(epoch) != self._epoch:
            self._register()
        self._refresh()
        self._reap()
        with self._lock:
            unreleased, self._unreleased = list(self._unreleased), set()
        if unreleased:
            self._release_devices(unreleased)

    def _register(self) -> None:
        """Take the epoch (setting one if Redis has none) and claim again, under it, the
        nicks this node serves; a nick another node took meanwhile is lost. Under a new
        epoch (Redis lost its data), also who is in each room here."""
        before = self._epoch
        # The publisher and `_release_devices` call these by their hash.
        self._lease_redis.script_load(PUBLISH)
        self._lease_redis.script_load(RELEASE_DEVICE)
        self._lease_redis.set(self._key("epoch"), os.urandom(8).hex(), nx=True)
        epoch = self._lease_redis.get(self._key("epoch"))
        self._epoch = _text(epoch) if epoch is not None else ""
        self._lease_redis.set(self._key("node", self.node), self._epoch, px=int(self._lease * 1000))
        with self._lock:
            claims = dict(self._claims)
            devices = list(self._devices)
        pipe = self._lease_redis.pipeline(transaction=False)
        for hexkey, field in devices:  # counted again as they were (no cap applies)
            pipe.hset(self._key("devices", hexkey), field, self.node)
            pipe.sadd(self._key("devices-of", self.node), self._key("devices", hexkey))
        pipe.execute()
        with self._lock:  # released meanwhile: counted again above, so given back again
            released = [entry for entry in devices if entry not in self._devices]
        if released:
            self._release_devices(released)
        for nick, (_, hexkey) in claims.items():
            ok = self._claim_script(
                keys=[self._key("nick", nick), self._key("nicks-of", self.node)],
                args=[self.node, hexkey, self._key("node", "")],
                client=self._lease_redis,
            )
            if not ok:
                with self._lock:
                    self._claims.pop(nick, None)
                self._hooks.lost_nick(nick)
        if before and before != self._epoch:
            self._hooks.registered()

    def _refresh(self) -> None:
        self._lease_redis.set(self._key("node", self.node), self._epoch, px=int(self._lease * 1000))
        self._last_refresh = self._monotonic()
        if self._fenced:
            self._forget_stale_claims()
            self._fenced = False
            log.info("cluster: lease held again: logins resume")

    def _forget_stale_claims(self) -> None:
        """After a fence: the claims Redis still holds for this node that no session
        holds any more are dropped."""
        listed = self._lease_redis.smembers(self._key("nicks-of", self.node))
        prefix = self._key("nick", "")
        with self._lock:
            held = {self._key("nick", n) for n in self._claims}
        pipe = self._lease_redis.pipeline(transaction=False)
        for raw in listed:
            key = _text(raw)
            if key.startswith(prefix) and key not in held:
                pipe.hdel(key, self.node)
                pipe.srem(self._key("nicks-of", self.node), key)
        pipe.execute()
        # And the devices it counted as online here that no session holds any more.
        prefix = self._key("devices", "")
        with self._lock:
            serving = set(self._devices)
        for raw in self._lease_redis.smembers(self._key("devices-of", self.node)):
            key = _text(raw)
            fields = self._lease_redis.hgetall(key)
            for field, node in fields.items():
                entry = (key[len(prefix) :], _text(field))
                if _text(node) == self.node and entry not in serving:
                    self._release_device_script(
                        keys=[key], args=[self.node, entry[1]], client=self._lease_redis
                    )

    def _reap(self) -> None:
        """Free the nicks of nodes whose lease expired (any node may do it: idempotent)."""
        prefix = self._key("nicks-of", "")
        for raw in self._lease_redis.scan_iter(match=prefix + "*", count=100):
            node = raw.decode()[len(prefix) :]
            if node == self.node or self._lease_redis.exists(self._key("node", node)):
                continue
            nick_keys = self._lease_redis.smembers(raw)
            pipe = self._lease_redis.pipeline(transaction=False)
            for nick_key in nick_keys:
                pipe.hdel(nick_key, node)
            # Its devices' fields go at the next claim of each person (CLAIM_DEVICE).
            pipe.delete(raw, self._key("devices-of", node))
            pipe.execute()
            # Its members leave their rooms, and every node hands its sessions what waits
            # for them again: it may have died between a whisper's commit and its push.
            self._forget_node(node)
            log.info("cluster: node %s is gone: freed its %d nick(s)", node, len(nick_keys))

    def _forget_node(self, node: str) -> None:
        """Take `node`'s members out of the rooms Redis lists, and tell every node it is
        gone (`node_gone`: they drop its members and hand out mailboxes again)."""
        entries = self._lease_redis.smembers(self._key("rooms-of", node))
        pipe = self._lease_redis.pipeline(transaction=False)
        for raw in entries:
            room, _, nick = _text(raw).partition("\t")
            key = self._key("members", room)
            held = self._lease_redis.hget(key, fold_nick(nick))
            if held is not None and _text(held).startswith(node + "\t"):
                pipe.hdel(key, fold_nick(nick))
        pipe.delete(self._key("rooms-of", node))
        pipe.publish(self._all_channel, f"gone\t{node}".encode())
        pipe.execute()

    def _key(self, kind: str, name: str | None = None) -> str:
        """The Redis key (or channel) `kind`:`name` under the prefix (scripts.py)."""
        return f"{self._p}{kind}" if name is None else f"{self._p}{kind}:{name}"


def _merged(items: list[tuple[str, str, bytes]]) -> list[tuple[str, str, bytes]]:
    """`items` with each room's consecutive line batches made one (nothing else of that
    room between them), so that they cost one publish and reach each member in one write
    on every node. The order of each room's items is kept."""
    merged: list[tuple[str, str, bytes]] = []
    open_lines: dict[str, int] = {}  # room -> index in `merged` of its batch still open
    for item in items:
        kind, name, data = item
        room = name.partition("\t")[0]
        if kind == "lines":
            at = open_lines.get(room)
            if at is not None:
                merged[at] = (kind, name, merged[at][2] + data)
                continue
            open_lines[room] = len(merged)
        elif kind in ("joined", "left", "state", "news"):
            open_lines.pop(room, None)  # a later batch must not jump ahead of it
        merged.append(item)
    return merged


def _text(value: object) -> str:
    """A Redis reply (bytes: the client does not decode) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: object) -> bytes:
    """A Redis reply as bytes (b"" for a missing one)."""
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode()
