-- streamcap: one decision for one user, atomically, inside Redis.
--
-- This is a port of limiter::apply (src/limiter/rules.rs), which stays the
-- reference: the differential tests feed random operations to both and
-- require identical answers. Change the two together.
--
-- KEYS[1]  sc:{user}:s  HASH  "l:<stream>" -> lease, "t:<stream>" -> tombstone
-- KEYS[2]  sc:{user}:o  STRING the per-user override (no expiry)
-- ARGV[1]  operation: acquire | release | revoke_all | list | get_limit | set_override
-- ARGV[2]  "" to read the clock with TIME (always, in production), or a
--          time in µs that tests inject
-- ARGV[3]  the operation's arguments as JSON
--
-- Times are µs since the Unix epoch. They are carried as strings, because
-- cjson prints numbers with 14 significant digits, and formatted with %.0f,
-- which is exact below 2^53.

local state_key, override_key = KEYS[1], KEYS[2]
local op = ARGV[1]
local args = cjson.decode(ARGV[3])

local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function fmt(n) return string.format('%.0f', n) end

-- Byte-wise string order, as Rust's; Lua's `<` would follow the locale.
local function before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- Load the user.
local leases, tombs = {}, {}
local raw = redis.call('HGETALL', state_key)
for i = 1, #raw, 2 do
  local field, value = raw[i], raw[i + 1]
  local stream = string.sub(field, 3)
  local v = cjson.decode(value)
  if string.sub(field, 1, 1) == 'l' then
    leases[stream] = { s = tonumber(v.s), e = tonumber(v.e), d = v.d, c = v.c }
  else
    tombs[stream] = { by = v.b, u = tonumber(v.u) }
  end
end
local override = redis.call('GET', override_key)
if override then override = tonumber(override) else override = nil end

local function put_lease(stream, l)
  redis.call('HSET', state_key, 'l:' .. stream, cjson.encode({ s = fmt(l.s), e = fmt(l.e), d = l.d, c = l.c }))
end

local function put_tomb(stream, t)
  redis.call('HSET', state_key, 't:' .. stream, cjson.encode({ b = t.by, u = fmt(t.u) }))
end

-- Drop what is no longer live (limiter::expire).
local expired = 0
local function expire()
  for stream, l in pairs(leases) do
    if l.e <= now then
      leases[stream] = nil
      redis.call('HDEL', state_key, 'l:' .. stream)
      expired = expired + 1
    end
  end
  for stream, t in pairs(tombs) do
    if t.u <= now then
      tombs[stream] = nil
      redis.call('HDEL', state_key, 't:' .. stream)
    end
  end
end

-- Live leases, oldest first, ties by stream id.
local function live()
  local out = {}
  for stream, l in pairs(leases) do
    if now < l.e then out[#out + 1] = { id = stream, l = l } end
  end
  table.sort(out, function(a, b)
    if a.l.s ~= b.l.s then return a.l.s < b.l.s end
    return before(a.id, b.id)
  end)
  return out
end

local function view(id, l)
  return { stream_id = id, device_id = l.d, content_id = l.c, started_at = fmt(l.s), expires_at = fmt(l.e) }
end

local function views(list)
  local out = {}
  for i, x in ipairs(list) do out[i] = view(x.id, x.l) end
  return out
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function revoke(id, by, till)
  leases[id] = nil
  redis.call('HDEL', state_key, 'l:' .. id)
  tombs[id] = { by = by, u = till }
  put_tomb(id, tombs[id])
end

-- Let the user's key vanish once nothing in it is live any more.
local function schedule_expiry()
  local last = nil
  for _, l in pairs(leases) do if last == nil or l.e > last then last = l.e end end
  for _, t in pairs(tombs) do if last == nil or t.u > last then last = t.u end end
  if last ~= nil then
    -- Relative, so an injected test clock cannot expire a key early; one
    -- second of slack, so the key never vanishes before the rules say so.
    redis.call('PEXPIRE', state_key, math.max(1, math.ceil((last - now) / 1000)) + 1000)
  end
end

-- Empty arrays are left out: cjson would encode them as objects.
local function nonempty(t)
  if #t == 0 then return nil end
  return t
end

local reply

if op == 'acquire' then
  expire()
  local id = args.stream
  local ttl = tonumber(args.ttl)
  local t = tombs[id]
  if t then
    reply = { kind = 'gone', stream_id = id, by = t.by, ['until'] = fmt(t.u) }
  else
    local limit = override or args.limit
    local expires = now + ttl
    local l = leases[id]
    if l then
      l.e = expires
      if args.device then l.d = args.device end
      if args.content then l.c = args.content end
      put_lease(id, l)
      reply = { kind = 'renewed', lease = view(id, l), active = count(leases), limit = limit }
    else
      local lv = live()
      local victims = nil
      if args.evict and #args.evict > 0 then
        local wanted = {}
        for _, e in ipairs(args.evict) do wanted[e] = true end
        local named = {}
        for _, x in ipairs(lv) do if wanted[x.id] then named[#named + 1] = x end end
        if #lv - #named < limit then victims = named end
      elseif #lv < limit then
        victims = {}
      elseif args.on_limit == 'evict_oldest' and #lv == limit and limit > 0 then
        victims = { lv[1] }
      end
      local would_deny, would_evict, evicted = false, {}, {}
      if victims == nil then
        if args.enforce then
          reply = { kind = 'denied', limit = limit, live = nonempty(views(lv)) }
        else
          would_deny = true
        end
      elseif args.enforce then
        evicted = victims
      else
        for i, x in ipairs(victims) do would_evict[i] = x.id end
      end
      if reply == nil then
        for _, x in ipairs(evicted) do revoke(x.id, id, x.l.e + ttl) end
        local nl = { s = now, e = expires, d = args.device, c = args.content }
        leases[id] = nl
        put_lease(id, nl)
        reply = {
          kind = 'granted', lease = view(id, nl), active = count(leases), limit = limit,
          evicted = nonempty(views(evicted)), would_deny = would_deny, would_evict = nonempty(would_evict),
        }
      end
    end
  end
  schedule_expiry()
elseif op == 'release' then
  expire()
  if leases[args.stream] then
    leases[args.stream] = nil
    redis.call('HDEL', state_key, 'l:' .. args.stream)
  end
  schedule_expiry()
  reply = { kind = 'done' }
elseif op == 'revoke_all' then
  expire()
  local ttl = tonumber(args.ttl)
  local ids = {}
  for i, x in ipairs(live()) do
    revoke(x.id, nil, x.l.e + ttl)
    ids[i] = x.id
  end
  schedule_expiry()
  reply = { kind = 'revoked', streams = nonempty(ids) }
elseif op == 'list' then
  reply = { kind = 'leases', limit = override or args.limit, live = nonempty(views(live())) }
elseif op == 'get_limit' then
  if override then
    reply = { kind = 'limit', limit = override, source = 'override' }
  else
    reply = { kind = 'limit', limit = args.limit, source = args.source }
  end
elseif op == 'set_override' then
  if args.limit then
    redis.call('SET', override_key, args.limit)
    reply = { kind = 'limit', limit = args.limit, source = 'override' }
  else
    redis.call('DEL', override_key)
    reply = { kind = 'done' }
  end
else
  return redis.error_reply('streamcap: unknown operation ' .. tostring(op))
end

reply.expired = expired
return cjson.encode(reply)
