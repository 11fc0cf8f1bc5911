"""The Lua scripts of ``RedisBroker``: each operation is one script, run atomically by Redis.

A topic is a stream read by one consumer group (``GROUP``), a sorted set of leases (the
receipt each claim hands out, scored by lease end), a sorted set of delayed entries, a
stream of dead letters and a counter of recovered work; the scripts keep them consistent.
"""

from __future__ import annotations

__all__ = [
    "ACK",
    "CLAIM",
    "DEAD",
    "EXTEND",
    "GROUP",
    "NACK",
    "PUBLISH",
    "REQUEUE",
]

GROUP = "stoic"

# Lua's unpack() stops near 8,000 values, so long argument lists go to a command in slices.
# (A claim that failed there after XREADGROUP would leave its entries pending without
# leases, never to be taken over.)
_CHUNKED = """
local function chunked(list, call)
  local out = {}
  for i = 1, #list, 1000 do
    local got = call(unpack(list, i, math.min(i + 999, #list)))
    if type(got) == 'table' then
      for _, v in ipairs(got) do out[#out + 1] = v end
    end
  end
  return out
end
"""

# A stream entry has two fields: "m", the metadata "<id>\x1f<created>\x1f<attempts before this
# entry>\x1f<headers JSON>", and "b", the body. Two fields instead of five halve what a claim
# returns and parses. JSON text never holds a raw control character, and ids may not.
_META = """
local function split(m)
  local id, c, a, h = string.match(m or '', '^([^\\31]*)\\31([^\\31]*)\\31([^\\31]*)\\31(.*)$')
  return id, c, a, h
end
local function meta(id, c, a, h)
  return id .. '\\31' .. c .. '\\31' .. a .. '\\31' .. h
end
"""

# KEYS: stream, delayed. ARGV: seen-prefix, window ms, now, headers, at, and the messages as
# one argument, "<id>\\31<body>" each, joined by \\30 (one argument is cheaper for the client
# to send than two per message; ids and JSON text hold no control characters). A batch with
# a body that does hold \\30 (an ``Encoded`` text that is not JSON, such as a damaged outbox
# row) comes instead as an empty ARGV[6] followed by id, body, id, body...: it is queued
# whole, and the consumer dead-letters what it cannot decode.
PUBLISH = """
local window, at = tonumber(ARGV[2]), tonumber(ARGV[5])
local tail = '\\31' .. ARGV[3] .. '\\31' .. '0' .. '\\31' .. ARGV[4]
local function add(id, body)
  if window <= 0 or redis.call('SET', ARGV[1] .. id, '1', 'NX', 'PX', window) then
    if at > 0 then
      redis.call('ZADD', KEYS[2], at, id .. tail .. '\\30' .. body)
    else
      redis.call('XADD', KEYS[1], '*', 'm', id .. tail, 'b', body)
    end
  end
end
local data = ARGV[6]
if data == '' then
  for i = 7, #ARGV, 2 do add(ARGV[i], ARGV[i + 1]) end
  return 1
end
local pos, size = 1, #data
while pos <= size do
  local cut = string.find(data, '\\31', pos, true)
  local stop = string.find(data, '\\30', cut, true) or size + 1
  add(string.sub(data, pos, cut - 1), string.sub(data, cut + 1, stop - 1))
  pos = stop + 1
end
return 1
"""

# A pending entry's lease is a member "<entry id>|<token>" of the leases set (the receipt a
# claim hands out), scored by lease end: an ack, nack or extension with a receipt that is no
# longer a member does nothing. Its delivery count is the stream's own (XPENDING).
_LEASED = _META + """
local function deliveries(eid)
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], eid, eid, 1)
  if #p > 0 then return tonumber(p[1][4]) or 1 end
  return 1
end
"""

# KEYS: stream, leases, delayed, recovered. ARGV: group, consumer, now, until, n, token
CLAIM = _LEASED + _CHUNKED + """
local now = tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)
for _, m in ipairs(due) do
  local cut = string.find(m, '\\30', 1, true)
  if cut then
    redis.call('XADD', KEYS[1], '*', 'm', string.sub(m, 1, cut - 1), 'b', string.sub(m, cut + 1))
  end
  redis.call('ZREM', KEYS[3], m)
end
local out, receipts = {}, {}
local n, token = tonumber(ARGV[5]), ARGV[6]
-- The reply is one string: a record per message, "<eid>\\31<tries>\\31<meta>\\30<body>" (no
-- \\30 when the body is missing), records separated by \\29. One string is far cheaper for
-- the client to read than XREADGROUP's nested reply or a string per message. Stored fields
-- hold neither separator (meta is control-character free, bodies are JSON text) unless an
-- entry was written by hand or its body is an ``Encoded`` text that is not JSON: such a
-- record goes without the field that cannot be framed (without both, if it is the meta),
-- which the client reports as a defect. The stream entry itself is untouched, so a dead
-- letter keeps what was stored.
local function emit(eid, flat, tries)
  local m, b = '', false
  if flat[1] == 'm' and flat[3] == 'b' then
    m, b = flat[2], flat[4]
  else
    for i = 1, #flat, 2 do
      if flat[i] == 'm' then m = flat[i + 1] elseif flat[i] == 'b' then b = flat[i + 1] end
    end
  end
  local record
  if string.find(m, '\\30', 1, true) or string.find(m, '\\29', 1, true) then
    record = eid .. '\\31' .. tries .. '\\31'
  elseif b and not string.find(b, '\\29', 1, true) then
    record = eid .. '\\31' .. tries .. '\\31' .. m .. '\\30' .. b
  else
    record = eid .. '\\31' .. tries .. '\\31' .. m
  end
  out[#out + 1] = record
  receipts[#receipts + 1] = eid .. '|' .. token
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, n)
for _, lease in ipairs(expired) do
  redis.call('ZREM', KEYS[2], lease)
  local cut = string.find(lease, '|', 1, true)
  local eid = lease
  if cut then eid = string.sub(lease, 1, cut - 1) end
  local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, eid)
  if #got > 0 and got[1] and got[1][2] then
    emit(eid, got[1][2], deliveries(eid))
    redis.call('INCR', KEYS[4])  -- stalled work that came back: stats().recovered
  end
end
if #out < n then
  local res = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n - #out,
                         'STREAMS', KEYS[1], '>')
  if res then
    for _, e in ipairs(res[1][2]) do emit(e[1], e[2], 1) end
  end
end
if #receipts > 0 then
  -- A small sorted set is a listpack that ZADD scans from its head for every member, and the
  -- new leases share one score: added in descending order each stops at the one added
  -- before it, where ascending order would walk the whole batch each time (O(n^2)).
  table.sort(receipts)
  local zargs = {}
  for i = #receipts, 1, -1 do
    zargs[#zargs + 1] = ARGV[4]; zargs[#zargs + 1] = receipts[i]
  end
  chunked(zargs, function(...) return redis.call('ZADD', KEYS[2], ...) end)
end
return table.concat(out, '\\29')
"""

# KEYS: stream, leases. ARGV: group, receipts "<eid>|<token>" joined by newlines (one
# argument is cheaper for the client to send than one per receipt)
# Which receipts are still held takes one read of the lease set, never a command per receipt
# (every command pays a key lookup, dear in a keyspace full of de-duplication marks). A set
# not much larger than the batch (the usual case) is read whole: in a small set, a listpack,
# ZMSCORE scans from the head for every receipt, O(n^2) for a batch.
ACK = _CHUNKED + """
local receipts = {}
for r in string.gmatch(ARGV[2], '[^\\n]+') do receipts[#receipts + 1] = r end
local held = {}
if redis.call('ZCARD', KEYS[2]) <= 2 * #receipts then
  for _, r in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do held[r] = true end
else
  local scores = chunked(receipts, function(...) return redis.call('ZMSCORE', KEYS[2], ...) end)
  for i = 1, #receipts do if scores[i] then held[receipts[i]] = true end end
end
local eids, leases = {}, {}
for _, r in ipairs(receipts) do
  if held[r] then
    held[r] = nil
    eids[#eids + 1] = string.sub(r, 1, string.find(r, '|', 1, true) - 1)
    leases[#leases + 1] = r
  end
end
if #eids == 0 then return 0 end
chunked(leases, function(...) return redis.call('ZREM', KEYS[2], ...) end)
chunked(eids, function(...) return redis.call('XACK', KEYS[1], ARGV[1], ...) end)
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1) > 0 then
  chunked(eids, function(...) return redis.call('XDEL', KEYS[1], ...) end)
  return #eids
end
-- Nothing is pending, so every entry up to the last one delivered has been acked (delivery
-- is in id order, and new entries get higher ids): one trim removes them all, where XDEL
-- would look up each id.
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == ARGV[1] then
    redis.call('XTRIM', KEYS[1], 'MINID', f['last-delivered-id'])
    redis.call('XDEL', KEYS[1], f['last-delivered-id'])
  end
end
return #eids
"""

_TAKE_BACK = _LEASED + """
local function take_back(eid, receipt)
  local tries = deliveries(eid)
  local e = redis.call('XRANGE', KEYS[1], eid, eid)
  local f = {}
  if #e > 0 then
    local flat = e[1][2]
    for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  end
  redis.call('XACK', KEYS[1], ARGV[1], eid)
  redis.call('XDEL', KEYS[1], eid)
  redis.call('ZREM', KEYS[2], receipt)
  local id, c, a, h = split(f['m'])
  if not id then id, c, a, h = eid, '0', '0', '' end
  local attempts = (tonumber(a) or 0) + tries
  return meta(id, c, tostring(attempts), h), f['b'] or '', #e > 0
end
"""

# KEYS: stream, leases, delayed. ARGV: group, eid, receipt, at, now
NACK = _TAKE_BACK + """
if not redis.call('ZSCORE', KEYS[2], ARGV[3]) then return 0 end
local m, b, found = take_back(ARGV[2], ARGV[3])
if not found then return 0 end
if tonumber(ARGV[4]) > tonumber(ARGV[5]) then
  redis.call('ZADD', KEYS[3], ARGV[4], m .. '\\30' .. b)
else
  redis.call('XADD', KEYS[1], '*', 'm', m, 'b', b)
end
return 1
"""

# KEYS: stream, leases, dead. ARGV: group, eid, receipt, reason, error, now
DEAD = _TAKE_BACK + """
if not redis.call('ZSCORE', KEYS[2], ARGV[3]) then return 0 end
local m, b, found = take_back(ARGV[2], ARGV[3])
redis.call('XADD', KEYS[3], '*', 'm', m, 'b', b, 'r', ARGV[4], 'e', ARGV[5], 't', ARGV[6])
return 1
"""

# KEYS: stream, leases. ARGV: receipt, until
EXTEND = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[1])
return 1
"""

# KEYS: stream, dead. ARGV: dead entry ids to requeue (all when none given)
REQUEUE = _META + """
local entries
if #ARGV == 0 then
  entries = redis.call('XRANGE', KEYS[2], '-', '+')
else
  entries = {}
  for _, eid in ipairs(ARGV) do
    local e = redis.call('XRANGE', KEYS[2], eid, eid)
    if #e > 0 then entries[#entries + 1] = e[1] end
  end
end
for _, e in ipairs(entries) do
  local f = {}
  local flat = e[2]
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  local id, c, a, h = split(f['m'])
  if not id then id, c, h = e[1], '0', '' end
  redis.call('XADD', KEYS[1], '*', 'm', meta(id, c, '0', h), 'b', f['b'] or '')
  redis.call('XDEL', KEYS[2], e[1])
end
return #entries
"""
