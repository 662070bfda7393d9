"""The backplane's Lua scripts and key names: each script runs atomically in Redis.

Keys (all under the backplane's prefix, "sc:" by default):

- `epoch`: a random id set once (`SET NX`) by the first node; Redis forgets it with the rest
  of its data, so a Redis restarted empty shows a new epoch.
- `node:ID`: node ID's lease (value: the epoch), expiring unless refreshed.
- `nick:NICK` (folded): a hash, one field per node serving the nick, valued with the
  identity key (hex) it proved, "" for a guest.
- `nicks-of:ID`: the nicks node ID claimed, for the reaper when its lease expires.
- `off:ROOM`: the room's last offset; `log:ROOM`: a capped stream of its batches, entry
  id "OFFSET-0", field `d` the batch.
- `state:ROOM`: the room's latest shared state (server/roomnews.py), as its batch.
- `devices:KEY` (an identity key, hex): a hash, "d" + device id -> the node serving that
  device of the person ("d" alone: the device holding the identity key); `devices-of:ID`:
  the `devices:KEY` hashes node ID wrote to, for its clean-up after a fence.
- `members:ROOM`: a hash, folded nick -> "NODE\\tNICK\\tKEY" (the node serving that member,
  the nick as shown, its identity key in hex or "" for a guest); `rooms-of:ID`: node ID's
  "ROOM\\tNICK" entries there.
- channel `rooms`: every room batch, "EPOCH\\tOFFSET\\tROOM\\n" then the batch: a line
  "ORIGIN" (the node that published it) then its frames, or "ORIGIN\\tnews" then room news;
  a `joined` of an identity's member starts "ORIGIN\\tkey\\tKEY" (its key in hex).
- channel `to:ID`: frames for sessions on node ID, "MAILBOX\\n" then the frame.
"""

from __future__ import annotations

__all__ = ["CLAIM", "CLAIM_DEVICE", "PUBLISH", "RELEASE_DEVICE"]

#: KEYS: off:ROOM, log:ROOM, epoch, state:ROOM. ARGV: the rooms channel, the batch, the
#: stream's length cap, the folded room, "1" if the batch is the room's new shared state
#: (kept as `state:ROOM`, in the same order as published) else "". Returns the batch's
#: offset, or false when Redis has no epoch (it restarted empty: the node registers
#: again before publishing).
PUBLISH = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then return false end
local off = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], off .. '-0', 'd', ARGV[2])
if ARGV[5] == '1' then redis.call('SET', KEYS[4], ARGV[2]) end
redis.call('PUBLISH', ARGV[1], epoch .. '\\t' .. off .. '\\t' .. ARGV[4] .. '\\n' .. ARGV[2])
return off
"""

#: KEYS: nick:NICK, nicks-of:ME. ARGV: my node id, the identity key (hex, "" for a guest),
#: the node lease key prefix. A nick is free if no live node serves it; it may also be
#: shared by nodes serving the same identity (its devices, or a reconnect landing on
#: another node), never by a guest. Fields of nodes whose lease expired are dropped on
#: the way. Returns 1 if claimed, 0 if taken.
CLAIM = """
local owners = redis.call('HGETALL', KEYS[1])
local taken = false
for i = 1, #owners, 2 do
  local node, key = owners[i], owners[i + 1]
  if node ~= ARGV[1] then
    if redis.call('EXISTS', ARGV[3] .. node) == 0 then
      redis.call('HDEL', KEYS[1], node)
    elseif ARGV[2] == '' or key ~= ARGV[2] then
      taken = true
    end
  end
end
if taken then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
return 1
"""

#: KEYS: devices:KEY, devices-of:ME. ARGV: my node id, the device's field, the most
#: devices one person may have online, the node lease key prefix. Counts the person's
#: other devices on live nodes (dropping fields of dead ones); if fewer than the most,
#: the device is this node's (taken over from another node if it was there: a
#: reconnect) and 1 is returned, else 0.
CLAIM_DEVICE = """
local fields = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #fields, 2 do
  local device, node = fields[i], fields[i + 1]
  if redis.call('EXISTS', ARGV[4] .. node) == 0 then
    redis.call('HDEL', KEYS[1], device)
  elseif device ~= ARGV[2] then
    others = others + 1
  end
end
if others >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[2], KEYS[1])
return 1
"""

#: KEYS: devices:KEY. ARGV: my node id, the device's field. The device is no longer
#: online here: its field goes, unless another node took it over meanwhile.
RELEASE_DEVICE = """
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[1] then
  redis.call('HDEL', KEYS[1], ARGV[2])
end
return 1
"""
