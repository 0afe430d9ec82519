-- streamcap: one decision for one user, atomically, inside Redis.
--
-- This is a port of limiter::apply (src/limiter/rules.rs), which stays the
-- reference: the differential tests feed random operations to both and
-- require identical answers. Change the two together.
--
-- KEYS[1]  sc:{user}:s  STRING, the user's leases and tombstones (below)
-- KEYS[2]  sc:{user}:o  STRING, the per-user override in decimal; no expiry
-- ARGV[1]  the operation; ARGV[2] "" to read the clock with TIME (always,
--          in production) or a time that tests inject; then, by operation:
--   acquire       stream, limit, ttl, on_limit ("reject" | "evict_oldest"),
--                 enforce ("1" | "0"), device, content, device class,
--                 content kind, plan, rules, take-over streams...
--   release       stream
--   revoke_all    ttl
--   list          limit (the plan's or the default; an override wins)
--   get_limit     (nothing)
--   set_override  limit, or "" to clear it
-- A label (device, content, device class, content kind, plan) is "" when
-- absent and "=" followed by its text when present, since an empty label
-- is still a label. Times and TTLs are integers in µs (times since the
-- Unix epoch), limits decimal. The rules are "" when there are none, else
-- one MessagePack sequence of six values per rule, in configured order:
-- name, device class, content kind (each false when the rule does not
-- scope by it), per_content (a boolean), limit, exempt (a boolean). The
-- five arguments from device class to rules may be left out together when
-- there is no take-over: they are then absent, and there are no rules.
--
-- The reply is one string: a MessagePack sequence whose first value names
-- its kind. A lease in it takes eight values, as stored: stream, started,
-- expires, device, content, device class, content kind, plan (false for
-- an absent label). A rule, where one is named, takes two values, its
-- name and its limit, and false stands for none (the user's total).
-- `expired` counts the leases this call found dead and removed.
--   acquire       "granted", expired, active, limit, started, expires,
--                   would_deny (a boolean), would-deny rule,
--                   n, <n evicted leases>, would-evict streams...
--                 "renewed", expired, active, limit, started, expires,
--                   device, content, device class, content kind, plan,
--                   would_deny (a boolean), would-deny rule
--                 "denied", expired, limit, rule, <live leases in its scope>...
--                 "gone", expired, until, evicting stream (false when revoked)
--   release       "done", expired
--   revoke_all    "revoked", expired, streams...
--   list          "leases", limit, <live leases>...
--   get_limit     "limit", override; or "limit" alone when there is none
--   set_override  "limit", limit; or "done"
-- A granted lease is the requested stream with the request's labels.
--
-- The state is a MessagePack sequence too: the format (3), the number of
-- leases, the number of tombstones, the key's deadline, the override (or
-- false), then eight values per lease (as above) in (started, stream)
-- order, then three per tombstone (stream, until, evicting stream or false
-- for a revocation). MessagePack keeps integers exact, and Lua's numbers
-- are exact below 2^53 µs, the year 2255.
--
-- The override key stays the one place an override is kept, for good; the
-- state carries a copy so that a decision reads one key, not two. Only
-- this script writes either, and it writes both: set_override updates the
-- copy, and a state created without one copies the key. (The versions of
-- this script before format 2, which wrote the override key alone, fail on
-- a user that has a format-2 or format-3 state, so they cannot make the
-- copy stale.)
--
-- The key expires (PX) at its deadline, which is always at least one
-- second after its last lease or tombstone ends and at most one TTL more
-- than that. Setting an expiry costs Redis about as much as the rest of a
-- SET, so a write that the deadline still covers keeps it (KEEPTTL), and
-- most renewals do. For the same reason a state left empty is written,
-- not deleted: it expires at its deadline like any other.
--
-- Earlier formats are read and replaced with format 3 when the script
-- next writes (reads leave them as they are), so nothing in them is lost:
-- format 2 is format 3 with five values per lease (no device class,
-- content kind or plan), and format 1 kept the same key as a HASH of
-- "l:<stream>" and "t:<stream>" fields with JSON values (a format-1 hash
-- left with nothing is deleted). The override never changed format.
--
-- Each redis.call costs about as much again as the command it runs, and
-- Lua tables and closures (above all closures over locals) are not free
-- either. So a decision calls TIME, reads one key (and the override key
-- only when there is no state yet) and writes at most once (SET, and not
-- at all when nothing changed), keeps the state in one flat table, and
-- defines functions only where they capture nothing (the rules' helpers,
-- which do, only when the request has rules). A plain renewal rewrites
-- only its lease's expiry in the stored bytes. Without rules, a new stream
-- is judged by counting alone: its one scope is every live lease.

local op = ARGV[1]
local state_key, override_key = KEYS[1], KEYS[2]
local call, pack = redis.call, cmsgpack.pack

-- MessagePack of t[i..j], in pieces small enough for Lua's stack.
local function slice(t, i, j)
  if j < i then return '' end
  if j - i < 4000 then return cmsgpack.pack(unpack(t, i, j)) end
  local pieces = {}
  for k = i, j, 4000 do pieces[#pieces + 1] = cmsgpack.pack(unpack(t, k, math.min(j, k + 3999))) end
  return table.concat(pieces)
end

-- Byte-wise order, as Rust compares stream ids. Lua's `<` calls strcoll,
-- which follows the LC_COLLATE that Redis takes from its environment.
-- Needed only for leases started in the same µs.
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- Reads a format-1 hash into a format-3 table and its lease and tombstone
-- counts. Its deadline is 0: the next write sets the expiry.
local function load_hash(key, override, before)
  local raw = redis.call('HGETALL', key)
  local function text(s) return type(s) == 'string' and s end
  local leases, tombstones = {}, {}
  for i = 1, #raw, 2 do
    local field, v = raw[i], cjson.decode(raw[i + 1])
    local stream = string.sub(field, 3)
    if string.byte(field, 1) == 108 then -- "l"
      leases[#leases + 1] = { stream, tonumber(v.s), tonumber(v.e), text(v.d), text(v.c), false, false, false }
    else
      tombstones[#tombstones + 1] = { stream, tonumber(v.u), text(v.b) }
    end
  end
  table.sort(leases, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    return before(a[1], b[1])
  end)
  local V = { 3, #leases, #tombstones, 0, override }
  for _, l in ipairs(leases) do
    for _, x in ipairs(l) do V[#V + 1] = x end
  end
  for _, t in ipairs(tombstones) do
    V[#V + 1], V[#V + 2], V[#V + 3] = t[1], t[2], t[3]
  end
  return V, #leases, #tombstones
end

-- Reads a MessagePack sequence (a state, or the rules) into a table.
local function decode(raw)
  local V
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
  return V
end

-- The rules (limiter::rules). R holds six values per rule (the argument
-- format above); a rule is named by its offset r (0, 6, ..), and nr is
-- #R. A scope is a pair (r, title): rule r, with the title a per_content
-- rule counts (false otherwise), or r = -1 for the user's total. A stream
-- is given by its device class, content kind and content id. These
-- functions call each other, so they are closures over locals: they are
-- made only for a request that has rules.
local matches, is_exempt, within, scopes, count, members, hit
if op == 'acquire' and ARGV[13] and ARGV[13] ~= '' then
  -- Does rule r match a stream of this class and kind?
  function matches(R, r, class, kind)
    local c, k = R[r + 2], R[r + 3]
    return (not c or c == class) and (not k or k == kind)
  end

  -- Does an exempt rule match it?
  function is_exempt(R, nr, class, kind)
    for r = 0, nr - 6, 6 do
      if R[r + 6] and matches(R, r, class, kind) then return true end
    end
    return false
  end

  -- Is the stream in scope (r, t)?
  function within(R, nr, r, t, class, kind, title)
    if r < 0 then return not is_exempt(R, nr, class, kind) end
    return matches(R, r, class, kind) and (not R[r + 4] or title == t)
  end

  -- The scopes a stream must fit in, as pairs in one list, in the order
  -- they are checked: its rules in configured order (a per_content rule
  -- only if it has a title), then the total unless it is exempt.
  function scopes(R, nr, class, kind, title)
    local S, m = {}, 0
    for r = 0, nr - 6, 6 do
      if matches(R, r, class, kind) and (title or not R[r + 4]) then
        S[m + 1], S[m + 2], m = r, R[r + 4] and title, m + 2
      end
    end
    if not is_exempt(R, nr, class, kind) then S[m + 1], S[m + 2] = -1, false end
    return S
  end

  -- How many of the nl leases of V are in scope (r, t), leaving out the
  -- offsets in skip, and the offset of the oldest of them.
  function count(V, nl, R, nr, r, t, skip)
    local m, first = 0, false
    for b = 5, 4 + 8 * nl, 8 do
      if not skip[b] and within(R, nr, r, t, V[b + 6], V[b + 7], V[b + 5]) then
        m = m + 1
        first = first or b
      end
    end
    return m, first
  end

  -- The leases of scope (r, t) except the one at offset skip, as a reply.
  function members(V, nl, R, nr, r, t, skip)
    local out = {}
    for b = 5, 4 + 8 * nl, 8 do
      if b ~= skip and within(R, nr, r, t, V[b + 6], V[b + 7], V[b + 5]) then out[#out + 1] = slice(V, b + 1, b + 8) end
    end
    return table.concat(out)
  end

  -- A rule as the reply names it, or false for the total.
  function hit(R, r)
    if r < 0 then return cmsgpack.pack(false) end
    return cmsgpack.pack(R[r + 1], R[r + 5])
  end
end

if op == 'get_limit' then
  local override = call('GET', override_key)
  if override then return pack('limit', tonumber(override)) end
  return pack('limit')
elseif op == 'set_override' then
  local limit = ARGV[3] ~= '' and tonumber(ARGV[3])
  local raw = redis.pcall('GET', state_key)
  if type(raw) == 'string' then
    -- Keep the state's copy in step, and the key's expiry as it is. The
    -- override's place is the same in formats 2 and 3.
    local V = decode(raw)
    if V[1] ~= 3 and V[1] ~= 2 then return redis.error_reply('streamcap: unreadable ' .. state_key) end
    V[5] = limit
    call('SET', state_key, slice(V, 1, #V), 'KEEPTTL')
  end
  if limit then
    call('SET', override_key, ARGV[3])
    return pack('limit', limit)
  end
  call('DEL', override_key)
  return pack('done')
elseif op ~= 'acquire' and op ~= 'release' and op ~= 'revoke_all' and op ~= 'list' then
  return redis.error_reply('streamcap: unknown operation ' .. tostring(op))
end

-- V holds the state as stored: V[1] = 3, V[2] = nl, V[3] = nt, V[4] the
-- deadline, V[5] the override. The lease at offset b (5, 13, ..,
-- 5 + 8 * (nl - 1)) is V[b + 1 .. b + 8]; the tombstones follow from
-- offset 5 + 8 * nl, three values each. n = #V.
local V, nl, nt
local stored = false -- the key holds a state
local dirty = false -- V differs from what is stored
local upgraded = false -- V is format 3, the stored bytes format 2
local raw = redis.pcall('GET', state_key)
if type(raw) == 'string' then
  V = decode(raw)
  nl, nt, stored = V[2], V[3], true
  if V[1] == 2 and #V == 5 + 5 * nl + 3 * nt then
    -- Format 2: the next write, if any, stores it as format 3.
    local U, w = { 3, nl, nt, V[4], V[5] }, 5
    for b = 5, 4 + 5 * nl, 5 do
      U[w + 1], U[w + 2], U[w + 3], U[w + 4], U[w + 5] = V[b + 1], V[b + 2], V[b + 3], V[b + 4], V[b + 5]
      U[w + 6], U[w + 7], U[w + 8], w = false, false, false, w + 8
    end
    for k = 6 + 5 * nl, #V do U[w + k - 5 - 5 * nl] = V[k] end
    V, upgraded = U, true
  elseif V[1] ~= 3 or #V ~= 5 + 8 * nl + 3 * nt then
    return redis.error_reply('streamcap: unreadable ' .. state_key)
  end
elseif raw then
  -- WRONGTYPE: a format-1 hash, which the next write replaces.
  raw = false
  V, nl, nt = load_hash(state_key, tonumber(call('GET', override_key)) or false, before)
  stored, dirty = true, true
elseif op == 'acquire' or op == 'list' then
  V, nl, nt = { 3, 0, 0, 0, tonumber(call('GET', override_key)) or false }, 0, 0
else
  V, nl, nt = { 3, 0, 0, 0, false }, 0, 0
end
if nl + nt == 0 and op ~= 'acquire' then
  -- Nothing to list, release or revoke, and nothing to write.
  if op == 'list' then return pack('leases', V[5] or tonumber(ARGV[3])) end
  if op == 'release' then return pack('done', 0) end
  return pack('revoked', 0)
end
local n = 5 + 8 * nl + 3 * nt

local now
if ARGV[2] == '' then
  local t = call('TIME')
  now = t[1] * 1000000 + t[2]
else
  now = tonumber(ARGV[2])
end

if op == 'list' then
  local head = pack('leases', V[5] or tonumber(ARGV[3]))
  local live = true
  for b = 5, 4 + 8 * nl, 8 do
    if V[b + 3] <= now then live = false end
  end
  if live then return head .. slice(V, 6, 5 + 8 * nl) end
  local L = {}
  for b = 5, 4 + 8 * nl, 8 do
    if now < V[b + 3] then
      for k = 1, 8 do L[#L + 1] = V[b + k] end
    end
  end
  return head .. slice(L, 1, #L)
end

-- Drop what is no longer live (limiter::expire), keeping the order.
local expired, w = 0, 5
for b = 5, 4 + 8 * nl, 8 do
  if now < V[b + 3] then
    if w ~= b then
      V[w + 1], V[w + 2], V[w + 3], V[w + 4] = V[b + 1], V[b + 2], V[b + 3], V[b + 4]
      V[w + 5], V[w + 6], V[w + 7], V[w + 8] = V[b + 5], V[b + 6], V[b + 7], V[b + 8]
    end
    w = w + 8
  else
    expired = expired + 1
  end
end
local kept = 0
for b = 5 + 8 * nl, n - 1, 3 do
  if now < V[b + 2] then
    if w ~= b then V[w + 1], V[w + 2], V[w + 3] = V[b + 1], V[b + 2], V[b + 3] end
    w = w + 3
    kept = kept + 1
  end
end
if w < n then
  for k = w + 1, n do V[k] = nil end
  nl, nt, n, dirty = nl - expired, kept, w, true
end

-- How far past the last end a new deadline may go: one TTL.
local slack = 0
local reply, spliced
if op == 'acquire' then
  local stream, ttl = ARGV[3], tonumber(ARGV[5])
  local limit = V[5] or tonumber(ARGV[4])
  local enforce = ARGV[7] == '1'
  slack = ttl
  for b = 5 + 8 * nl, n - 1, 3 do
    if V[b + 1] == stream then
      reply = pack('gone', expired, V[b + 2], V[b + 3])
      break
    end
  end
  local at -- the offset of the stream's lease
  if not reply then
    for b = 5, 4 + 8 * nl, 8 do
      if V[b + 1] == stream then
        at = b
        break
      end
    end
  end
  local expires = now + ttl
  local device, content, class, kind, plan = ARGV[8], ARGV[9], ARGV[10] or '', ARGV[11] or '', ARGV[12] or ''
  device = device ~= '' and string.sub(device, 2)
  content = content ~= '' and string.sub(content, 2)
  class = class ~= '' and string.sub(class, 2)
  kind = kind ~= '' and string.sub(kind, 2)
  plan = plan ~= '' and string.sub(plan, 2)
  local R, nr = false, 0
  if ARGV[13] and ARGV[13] ~= '' and not reply then
    R = decode(ARGV[13])
    nr = #R
  end
  if at then
    -- A live stream always renews, even over a lowered limit, unless it
    -- moves into a scope it was not in (a new device class, content kind
    -- or title) and that scope is full without it.
    local blocked = false -- the scope, as its offset in S
    local S
    local old_class, old_kind, old_title = V[at + 6], V[at + 7], V[at + 5]
    local new_class, new_kind, new_title = class or old_class, kind or old_kind, content or old_title
    if R and (new_class ~= old_class or new_kind ~= old_kind or new_title ~= old_title) then
      S = scopes(R, nr, new_class, new_kind, new_title)
      local skip = { [at] = true }
      for s = 1, #S, 2 do
        local r, t = S[s], S[s + 1]
        if not within(R, nr, r, t, old_class, old_kind, old_title)
            and count(V, nl, R, nr, r, t, skip) >= (r < 0 and limit or R[r + 5]) then
          blocked = s
          break
        end
      end
    end
    if blocked and enforce then
      -- Refused: the lease stays exactly as it was.
      local r, t = S[blocked], S[blocked + 1]
      reply = pack('denied', expired, limit) .. hit(R, r) .. members(V, nl, R, nr, r, t, at)
    else
      if raw and not dirty and not upgraded and at < 4000 and expires + 1000000 <= V[4]
          and (not device or device == V[at + 4]) and (not content or content == V[at + 5])
          and (not class or class == V[at + 6]) and (not kind or kind == V[at + 7])
          and (not plan or plan == V[at + 8]) then
        -- Only this expiry changes: replace just its bytes in the stored
        -- string, found by the decoder itself, rather than encode it all.
        local from = cmsgpack.unpack_limit(raw, at + 2, 0)
        local to = cmsgpack.unpack_limit(raw, 1, from)
        spliced = string.sub(raw, 1, from) .. pack(expires) .. string.sub(raw, to + 1)
      end
      V[at + 3], dirty = expires, true
      if device then V[at + 4] = device end
      if content then V[at + 5] = content end
      if class then V[at + 6] = class end
      if kind then V[at + 7] = kind end
      if plan then V[at + 8] = plan end
      local rule = blocked and S[blocked] >= 0 and S[blocked] -- the would-deny rule
      reply = pack('renewed', expired, nl, limit, V[at + 2], expires, V[at + 4], V[at + 5], V[at + 6], V[at + 7],
        V[at + 8], blocked and true or false, rule and R[rule + 1])
      if rule then reply = reply .. pack(R[rule + 5]) end
    end
  elseif not reply then
    -- Which leases must go for this one to fit (their offsets, oldest
    -- first), if any, or else the scope that blocks it (rule offset r and
    -- title t; r = -1 for the total).
    local fits, victims = false, nil
    local r, t = -1, false
    if not R then
      -- No rules: the one scope is the total, and every live lease is in it.
      if ARGV[14] then
        -- Take-over: the named live streams go, but only if that frees a seat.
        local wanted = {}
        for i = 14, #ARGV do wanted[ARGV[i]] = true end
        victims = {}
        for b = 5, 4 + 8 * nl, 8 do
          if wanted[V[b + 1]] then victims[#victims + 1] = b end
        end
        fits = nl - #victims < limit
      elseif nl < limit then
        fits = true
      elseif ARGV[6] == 'evict_oldest' and nl == limit and limit > 0 then
        -- Exactly full: the oldest makes room. Over the limit (after an
        -- override was lowered), nobody is evicted and new streams wait.
        fits, victims = true, { 5 }
      end
    else
      local S = scopes(R, nr, class, kind, content)
      local skip = {} -- leases that no longer count: the victims
      local blocked = false -- the scope, as its offset in S
      if ARGV[14] then
        -- Take-over: the named live streams go, but only if that frees a
        -- seat in every scope.
        local wanted = {}
        for i = 14, #ARGV do wanted[ARGV[i]] = true end
        victims = {}
        for b = 5, 4 + 8 * nl, 8 do
          if wanted[V[b + 1]] then victims[#victims + 1], skip[b] = b, true end
        end
        for s = 1, #S, 2 do
          if count(V, nl, R, nr, S[s], S[s + 1], skip) >= (S[s] < 0 and limit or R[S[s] + 5]) then
            blocked = s
            break
          end
        end
      else
        for s = 1, #S, 2 do
          if count(V, nl, R, nr, S[s], S[s + 1], skip) >= (S[s] < 0 and limit or R[S[s] + 5]) then
            blocked = s
            break
          end
        end
        if blocked and ARGV[6] == 'evict_oldest' then
          -- In each full scope, in order, the oldest stream not already
          -- chosen makes room. A scope over its limit (after a limit was
          -- lowered) or with no seats at all evicts nobody.
          blocked, victims = false, {}
          for s = 1, #S, 2 do
            local m, first = count(V, nl, R, nr, S[s], S[s + 1], skip)
            local seats = S[s] < 0 and limit or R[S[s] + 5]
            if m >= seats then
              if m > seats or seats == 0 then
                blocked = s
                break
              end
              victims[#victims + 1], skip[first] = first, true
            end
          end
          table.sort(victims)
        end
      end
      fits = not blocked
      if blocked then r, t = S[blocked], S[blocked + 1] end
    end
    if not fits and enforce then
      if R then
        reply = pack('denied', expired, limit) .. hit(R, r) .. members(V, nl, R, nr, r, t, false)
      else
        reply = pack('denied', expired, limit, false) .. slice(V, 6, 5 + 8 * nl)
      end
    else
      local gone, tail = 0, '' -- the evicted leases or the would-be victims
      if fits and victims then
        if enforce then
          for _, b in ipairs(victims) do
            tail = tail .. slice(V, b + 1, b + 8)
            V[n + 1], V[n + 2], V[n + 3] = V[b + 1], V[b + 3] + ttl, stream
            n, nt = n + 3, nt + 1
          end
          for i = #victims, 1, -1 do
            for k = victims[i] + 1, n - 8 do V[k] = V[k + 8] end
            for k = n - 7, n do V[k] = nil end
            n, nl = n - 8, nl - 1
          end
          gone = #victims
        else
          for _, b in ipairs(victims) do tail = tail .. pack(V[b + 1]) end
        end
      end
      -- The new lease goes after every lease that started before it: at
      -- the end of the leases, unless the clock went back or another lease
      -- started in the same µs.
      local b = 5 + 8 * nl
      while b > 5 and (V[b - 6] > now or (V[b - 6] == now and before(stream, V[b - 7]))) do b = b - 8 end
      for k = n, b + 1, -1 do V[k + 8] = V[k] end
      V[b + 1], V[b + 2], V[b + 3], V[b + 4] = stream, now, expires, device
      V[b + 5], V[b + 6], V[b + 7], V[b + 8] = content, class, kind, plan
      n, nl, dirty = n + 8, nl + 1, true
      if fits or r < 0 then
        reply = pack('granted', expired, nl, limit, now, expires, not fits, false, gone) .. tail
      else
        reply = pack('granted', expired, nl, limit, now, expires, true, R[r + 1], R[r + 5], gone) .. tail
      end
    end
  end
elseif op == 'release' then
  for b = 5, 4 + 8 * nl, 8 do
    if V[b + 1] == ARGV[3] then
      for k = b + 1, n - 8 do V[k] = V[k + 8] end
      for k = n - 7, n do V[k] = nil end
      n, nl, dirty = n - 8, nl - 1, true
      break
    end
  end
  reply = pack('done', expired)
else -- revoke_all
  local ttl = tonumber(ARGV[3])
  slack = ttl
  local streams = {}
  local leases = 8 * nl
  for b = 5, 4 + leases, 8 do
    streams[#streams + 1] = V[b + 1]
    V[n + 1], V[n + 2], V[n + 3] = V[b + 1], V[b + 3] + ttl, false
    n = n + 3
  end
  if nl > 0 then
    -- The tombstones move up over the leases.
    for k = 6, n - leases do V[k] = V[k + leases] end
    for k = n - leases + 1, n do V[k] = nil end
    n, nt, nl, dirty = n - leases, nt + nl, 0, true
  end
  reply = pack('revoked', expired) .. slice(streams, 1, #streams)
end

-- Write the state back if it changed. The key must live until one second
-- after its last lease or tombstone ends. If its deadline covers that, the
-- expiry stays; otherwise it moves to one slack later, so that the next
-- few renewals can keep it.
if dirty then
  local last = false
  for b = 5, 4 + 8 * nl, 8 do
    if not last or V[b + 3] > last then last = V[b + 3] end
  end
  for b = 5 + 8 * nl, n - 1, 3 do
    if not last or V[b + 2] > last then last = V[b + 2] end
  end
  if not last and not raw then
    if stored then call('DEL', state_key) end
  elseif raw and (not last or last + 1000000 <= V[4]) then
    -- Nothing left keeps its record until the deadline too: a user who
    -- starts again soon finds it, and deleting costs as much as writing.
    V[2], V[3] = nl, nt
    call('SET', state_key, spliced or slice(V, 1, n), 'KEEPTTL')
  else
    -- In ms, relative, so that an injected test clock cannot expire it early.
    local px = math.ceil((last - now + slack) / 1000) + 1000
    V[2], V[3], V[4] = nl, nt, now + px * 1000
    call('SET', state_key, slice(V, 1, n), 'PX', px)
  end
end
return reply
