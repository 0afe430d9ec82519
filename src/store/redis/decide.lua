-- streamcap: one decision for one user, atomically, inside Redis.
--
-- This is a port of limiter::apply (src/limiter/rules.rs), which stays the
-- reference: the differential tests feed random operations to both and
-- require identical answers. Change the two together.
--
-- KEYS[1]  sc:{user}:s  STRING, the user's leases and tombstones (below),
--                       expiring (PX) one second after the last of them ends
-- KEYS[2]  sc:{user}:o  STRING, the per-user override in decimal; no expiry
-- ARGV[1]  the operation; ARGV[2] "" to read the clock with TIME (always,
--          in production) or a time that tests inject; then, by operation:
--   acquire       stream, limit, ttl, on_limit ("reject" | "evict_oldest"),
--                 enforce ("1" | "0"), device, content, take-over streams...
--   release       stream
--   revoke_all    ttl
--   list          limit (the plan's or the default; an override wins)
--   get_limit     (nothing)
--   set_override  limit, or "" to clear it
-- A label (device, content) is "" when absent and "=" followed by its text
-- when present, since an empty label is still a label. Times and TTLs are
-- integers in µs (times since the Unix epoch), limits decimal.
--
-- The reply is a flat array whose first element names its kind. A lease in
-- it takes five elements, as stored: stream, started, expires, device,
-- content (nil for an absent label). `expired` counts the leases this call
-- found dead and removed.
--   acquire       {"granted", expired, active, limit, started, expires,
--                   would_deny (0 | 1), n, <n evicted leases>, would-evict streams...}
--                 {"renewed", expired, active, limit, started, expires, device, content}
--                 {"denied", expired, limit, <live leases>...}
--                 {"gone", expired, until, evicting stream (nil when revoked)}
--   release       {"done", expired}
--   revoke_all    {"revoked", expired, streams...}
--   list          {"leases", limit, <live leases>...}
--   get_limit     {"limit", override}, or {"limit"} when there is none
--   set_override  {"limit", limit} or {"done"}
-- A granted lease is the requested stream with the request's labels.
--
-- The state is a MessagePack sequence of scalars: the format (2), the
-- number of leases, the number of tombstones, then five values per lease
-- (stream, started, expires, device, content; false for an absent label)
-- in (started, stream) order, then three per tombstone (stream, until,
-- evicting stream or false for a revocation). MessagePack keeps integers
-- exact, and Lua's numbers are exact below 2^53 µs, the year 2255.
-- Format 1, written by earlier versions, kept the same key as a HASH of
-- "l:<stream>" and "t:<stream>" fields with JSON values. The script still
-- reads it and replaces it with format 2 when it next writes. The override
-- never changed format.
--
-- Each redis.call costs about as much again as the command it runs, and a
-- Lua closure or table costs a fair part of one. So the script makes at most
-- TIME, one read (MGET, or GET), and one write (SET with PX, or DEL), which
-- it skips when nothing changed, and it keeps the state in one flat table.

local call, pack, byte, sub = redis.call, cmsgpack.pack, string.byte, string.sub
local state_key, override_key = KEYS[1], KEYS[2]
local op = ARGV[1]

if op == 'get_limit' then
  local override = call('GET', override_key)
  if override then return { 'limit', tonumber(override) } end
  return { 'limit' }
elseif op == 'set_override' then
  if ARGV[3] == '' then
    call('DEL', override_key)
    return { 'done' }
  end
  call('SET', override_key, ARGV[3])
  return { 'limit', tonumber(ARGV[3]) }
elseif op ~= 'acquire' and op ~= 'release' and op ~= 'revoke_all' and op ~= 'list' then
  return redis.error_reply('streamcap: unknown operation ' .. tostring(op))
end

-- V holds the state as stored: V[1] = 2, V[2] = nl, V[3] = nt. The lease
-- at offset b (3, 8, .., 3 + 5 * (nl - 1)) is V[b + 1 .. b + 5]; the
-- tombstones follow from offset 3 + 5 * nl, three values each. n = #V.
local V, nl, nt, n = { 2, 0, 0 }, 0, 0, 3
local stored = false -- the key holds a state
local dirty = false -- V differs from what is stored

-- Byte-wise order, as Rust compares stream ids. Lua's `<` calls strcoll,
-- which follows the LC_COLLATE that Redis takes from its environment.
-- Needed only for leases started in the same µs.
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = byte(a, i), byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- Reads a format-1 hash, if there is one, into V.
local function load_hash()
  local raw = call('HGETALL', state_key)
  if #raw == 0 then return end
  stored, dirty = true, true
  local function text(s) return type(s) == 'string' and s end
  local leases = {}
  for i = 1, #raw, 2 do
    local field, v = raw[i], cjson.decode(raw[i + 1])
    local stream = sub(field, 3)
    if byte(field, 1) == 108 then -- "l"
      leases[#leases + 1] = { stream, tonumber(v.s), tonumber(v.e), text(v.d), text(v.c) }
    else
      V[n + 1], V[n + 2], V[n + 3] = stream, tonumber(v.u), text(v.b)
      n, nt = n + 3, nt + 1
    end
  end
  table.sort(leases, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    return before(a[1], b[1])
  end)
  nl = #leases
  for k = n, 4, -1 do V[k + 5 * nl] = V[k] end -- the tombstones go after the leases
  for i, l in ipairs(leases) do
    local b = 5 * i - 2
    V[b + 1], V[b + 2], V[b + 3], V[b + 4], V[b + 5] = l[1], l[2], l[3], l[4], l[5]
  end
  n = n + 5 * nl
end

-- Reads a format-2 state into V.
local function load(raw)
  stored = true
  if #raw <= 4000 then
    -- At most 4000 values, well within what Lua takes on its stack.
    V = { cmsgpack.unpack(raw) }
  else
    V = {}
    local at = 0
    repeat
      local chunk = { cmsgpack.unpack_limit(raw, 4000, at) }
      at = chunk[1]
      for i = 2, #chunk do V[#V + 1] = chunk[i] end
    until at == -1
  end
  nl, nt = V[2], V[3]
  n = 3 + 5 * nl + 3 * nt
  if V[1] ~= 2 or #V ~= n then return error('streamcap: unreadable state in ' .. state_key) end
end

local override = false
if op == 'acquire' or op == 'list' then
  local both = call('MGET', state_key, override_key)
  -- MGET reads a hash as nil, so nil may still be a format-1 state.
  if both[1] then load(both[1]) else load_hash() end
  override = both[2]
else
  local raw = redis.pcall('GET', state_key)
  if type(raw) == 'table' then
    load_hash() -- WRONGTYPE: a format-1 hash
  elseif raw then
    load(raw)
  end
end
if not stored and op ~= 'acquire' then
  if op == 'list' then return { 'leases', tonumber(override or ARGV[3]) } end
  if op == 'release' then return { 'done', 0 } end
  return { 'revoked', 0 }
end

local now
if ARGV[2] == '' then
  local t = call('TIME')
  now = t[1] * 1000000 + t[2]
else
  now = tonumber(ARGV[2])
end

if op == 'list' then
  local reply = { 'leases', tonumber(override or ARGV[3]) }
  for b = 3, 5 * nl, 5 do
    if now < V[b + 3] then
      local r = #reply
      reply[r + 1], reply[r + 2], reply[r + 3], reply[r + 4], reply[r + 5] = V[b + 1], V[b + 2], V[b + 3], V[b + 4], V[b + 5]
    end
  end
  return reply
end

-- Drop what is no longer live (limiter::expire), keeping the order.
local expired, w = 0, 3
for b = 3, 5 * nl, 5 do
  if now < V[b + 3] then
    if w ~= b then V[w + 1], V[w + 2], V[w + 3], V[w + 4], V[w + 5] = V[b + 1], V[b + 2], V[b + 3], V[b + 4], V[b + 5] end
    w = w + 5
  else
    expired = expired + 1
  end
end
local live_tombstones = 0
for b = 3 + 5 * nl, n - 1, 3 do
  if now < V[b + 2] then
    if w ~= b then V[w + 1], V[w + 2], V[w + 3] = V[b + 1], V[b + 2], V[b + 3] end
    w = w + 3
    live_tombstones = live_tombstones + 1
  end
end
if w < n then
  for k = w + 1, n do V[k] = nil end
  nl, nt, n, dirty = nl - expired, live_tombstones, w, true
end

local reply
if op == 'acquire' then
  local stream, ttl = ARGV[3], tonumber(ARGV[5])
  local limit = tonumber(override or ARGV[4])
  for b = 3 + 5 * nl, n - 1, 3 do
    if V[b + 1] == stream then
      reply = { 'gone', expired, V[b + 2], V[b + 3] }
      break
    end
  end
  local at -- the offset of the stream's lease
  if not reply then
    for b = 3, 5 * nl, 5 do
      if V[b + 1] == stream then
        at = b
        break
      end
    end
  end
  local expires = now + ttl
  local device, content = ARGV[8], ARGV[9]
  device = device ~= '' and sub(device, 2)
  content = content ~= '' and sub(content, 2)
  if at then
    -- A live stream always renews, even over a lowered limit.
    V[at + 3], dirty = expires, true
    if device then V[at + 4] = device end
    if content then V[at + 5] = content end
    reply = { 'renewed', expired, nl, limit, V[at + 2], expires, V[at + 4], V[at + 5] }
  elseif not reply then
    -- Which leases must go for this one to fit (their offsets), if any.
    local fits, victims = false, nil
    if ARGV[10] then
      -- Take-over: the named live streams go, but only if that frees a seat.
      local wanted = {}
      for i = 10, #ARGV do wanted[ARGV[i]] = true end
      victims = {}
      for b = 3, 5 * nl, 5 do
        if wanted[V[b + 1]] then victims[#victims + 1] = b end
      end
      fits = nl - #victims < limit
    elseif nl < limit then
      fits = true
    elseif ARGV[6] == 'evict_oldest' and nl == limit and limit > 0 then
      -- Exactly full: the oldest makes room. Over the limit (after an
      -- override was lowered), nobody is evicted and new streams wait.
      fits, victims = true, { 3 }
    end
    local enforce = ARGV[7] == '1'
    if not fits and enforce then
      reply = { 'denied', expired, limit }
      for k = 4, 3 + 5 * nl do reply[k] = V[k] end
    else
      reply = { 'granted', expired, 0, limit, now, expires, fits and 0 or 1, 0 }
      if fits and victims and #victims > 0 then
        if enforce then
          reply[8] = #victims
          for _, b in ipairs(victims) do
            local r = #reply
            reply[r + 1], reply[r + 2], reply[r + 3], reply[r + 4], reply[r + 5] = V[b + 1], V[b + 2], V[b + 3], V[b + 4], V[b + 5]
            V[n + 1], V[n + 2], V[n + 3] = V[b + 1], V[b + 3] + ttl, stream
            n, nt = n + 3, nt + 1
          end
          for i = #victims, 1, -1 do
            for k = victims[i] + 1, n - 5 do V[k] = V[k + 5] end
            for k = n - 4, n do V[k] = nil end
            n, nl = n - 5, nl - 1
          end
        else
          for _, b in ipairs(victims) do reply[#reply + 1] = V[b + 1] end
        end
      end
      -- The new lease goes after every lease that started before it: at
      -- the end of the leases, unless the clock went back or another lease
      -- started in the same µs.
      local b = 3 + 5 * nl
      while b > 3 and (V[b - 3] > now or (V[b - 3] == now and before(stream, V[b - 4]))) do b = b - 5 end
      for k = n, b + 1, -1 do V[k + 5] = V[k] end
      V[b + 1], V[b + 2], V[b + 3], V[b + 4], V[b + 5] = stream, now, expires, device, content
      n, nl, dirty = n + 5, nl + 1, true
      reply[3] = nl
    end
  end
elseif op == 'release' then
  for b = 3, 5 * nl, 5 do
    if V[b + 1] == ARGV[3] then
      for k = b + 1, n - 5 do V[k] = V[k + 5] end
      for k = n - 4, n do V[k] = nil end
      n, nl, dirty = n - 5, nl - 1, true
      break
    end
  end
  reply = { 'done', expired }
else -- revoke_all
  local ttl = tonumber(ARGV[3])
  reply = { 'revoked', expired }
  local leases = 5 * nl
  for b = 3, 2 + leases, 5 do
    reply[#reply + 1] = V[b + 1]
    V[n + 1], V[n + 2], V[n + 3] = V[b + 1], V[b + 3] + ttl, false
    n = n + 3
  end
  if nl > 0 then
    -- The tombstones move up over the leases.
    for k = 4, n - leases do V[k] = V[k + leases] end
    for k = n - leases + 1, n do V[k] = nil end
    n, nt, nl, dirty = n - leases, nt + nl, 0, true
  end
end

-- Write the state back if it changed, to expire one second after its last
-- lease or tombstone ends (relative to `now`, so that an injected test
-- clock cannot expire it early), or delete it when nothing is left.
if dirty then
  local last = false
  for b = 3, 5 * nl, 5 do
    if not last or V[b + 3] > last then last = V[b + 3] end
  end
  for b = 3 + 5 * nl, n - 1, 3 do
    if not last or V[b + 2] > last then last = V[b + 2] end
  end
  if last then
    V[2], V[3] = nl, nt
    local packed
    if n <= 4000 then
      packed = pack(unpack(V, 1, n))
    else
      local chunks = {}
      for i = 1, n, 4000 do chunks[#chunks + 1] = pack(unpack(V, i, math.min(n, i + 3999))) end
      packed = table.concat(chunks)
    end
    call('SET', state_key, packed, 'PX', math.max(1, math.ceil((last - now) / 1000)) + 1000)
  elseif stored then
    call('DEL', state_key)
  end
end
return reply
