"""Protocol constants. Each value carries the reason it has that value."""

from __future__ import annotations

#: Bumped on any incompatible change to frames; the hello carries it. Version 2 added
#: rooms (join, part, topics, registered rooms, bans, renaming); version 3 post-quantum
#: session setup (KEM prekeys in `publish_keys`, `keys` and `prekey_count`, and ratchet
#: headers up to 2,048 bytes); version 4 linked devices (see `DEVICES_VERSION`).
PROTOCOL_VERSION = 4

#: Hello versions a server accepts. A version-1 session is served `#lobby` only (see
#: docs/protocol.md, "Rooms"); a version-2 one gets no KEM prekeys; the session reads
#: `hello.version` to know which it serves.
SUPPORTED_VERSIONS = (1, 2, 3, 4)

#: The first protocol version with KEM prekeys (see `PROTOCOL_VERSION`).
KEM_VERSION = 3

#: The first protocol version with linked devices: device lists (`publish_devices`,
#: `devices`), the other devices' bundles in `keys`, whispers addressed to a device,
#: pairing (`link`). A session of an older version is served as its person's one device.
DEVICES_VERSION = 4

#: One JSON line may not exceed this many bytes (newline excluded). Large enough for a
#: key bundle with 100 one-time prekeys in base64 (~10 KiB), small enough that a
#: hostile peer cannot make us buffer without bound. A room's member list can pass it
#: (~2,400 nicks of 24 characters): it is sent in `members` pages (codec.split_members).
MAX_LINE_BYTES = 64 * 1024

#: Message text, in UTF-8 bytes. Eight times IRC's 512-byte line; enough for a paste.
MAX_TEXT_BYTES = 4096

#: Nicks: ASCII only, so that look-alike letters from other scripts cannot
#: impersonate someone (a Cyrillic "a" in "alice"). 24 fits every terminal layout.
MAX_NICK_CHARS = 24

#: Room names after the leading '#'.
MAX_ROOM_CHARS = 32

#: Free-text fields other than messages: reasons, client names, tokens.
MAX_SHORT_TEXT_CHARS = 256

#: An `error`'s `ref` and a `fetch_keys`' ref (which the server echoes in `error.ref`
#: and `keys.ref`): one limit, so every ref a client may send can come back. 64 fits a
#: whisper id, a room name and a nick.
MAX_REF_CHARS = 64

#: A device id in a `hello`: 1-32 of A-Z a-z 0-9 _ -, chosen once by each keystore.
MAX_DEVICE_CHARS = 32

#: A user list longer than this is not something a server sends; it also bounds the
#: members a client holds in `members` pages not yet completed (client/rooms.py).
MAX_USERS_LISTED = 100_000

#: A room's topic, as IRC networks commonly allow (TOPICLEN 307 on many).
MAX_TOPIC_CHARS = 256

#: A `list` answer names at most this many rooms (then `truncated`): enough to browse,
#: and a server with 1000 rooms is not asked to send them all at once. A line also
#: caps it: `fit_rooms` cuts a list whose topics would not fit one.
MAX_ROOMS_LISTED = 500

#: A `list` pattern: a glob on room names ('#', 1-32 name characters, '*' and '?'), with
#: room for a few more wildcards than a name has characters.
MAX_PATTERN_CHARS = 64

#: A ban mask: a nick, or a nick glob with '*' and '?'. A pattern longer than a nick
#: plus a few wildcards matches nothing more, and the short bound keeps a full ban list
#: (`MAX_BANS_LISTED` entries at their longest) inside one line.
MAX_MASK_CHARS = 32

#: A `ban_list` carries at most this many bans; a server's per-room ban cap must not
#: exceed it (its default is 200).
MAX_BANS_LISTED = 500

#: The only room in protocol version 1; every chat event names it so rooms can come
#: later without a breaking change.
DEFAULT_ROOM = "#lobby"
