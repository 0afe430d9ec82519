-- streamcap: store a user's state only if it is still what the caller read.
--
-- The decision was made outside Redis, by the rules in Rust, on exactly
-- the bytes the caller read. This script decides nothing: it compares,
-- then writes. It runs as one atomic step, so no other write to the user
-- can come between the comparison and the writes.
--
-- KEYS[1]  sc:{user}:s  the user's state (src/store/redis/state.rs)
-- KEYS[2]  sc:{user}:o  the user's override: decimal when it is for good
--          (kept for good), or a hash {limit, until} when it ends at
--          `until` (µs), which expires by itself a little after that
-- ARGV[1]  the state as read, or "" when there was none
-- ARGV[2]  with no state read: the override key as read, "" when absent,
--          "<limit>@<until>" for a hash
-- ARGV[3]  the state to store, or "" to leave the key as it is
-- ARGV[4]  its expiry in ms, or "" to keep the key's expiry (KEEPTTL)
-- ARGV[5]  the override to store: "" leaves it, "-" deletes it, else as
--          in ARGV[2]
-- ARGV[6]  with an override that ends: the override key's expiry in ms
-- Returns 1 when it wrote, 0 when the user's keys had changed.
local function override()
  if redis.call('TYPE', KEYS[2]).ok == 'hash' then
    local v = redis.call('HMGET', KEYS[2], 'limit', 'until')
    return (v[1] or '') .. '@' .. (v[2] or '')
  end
  return redis.call('GET', KEYS[2]) or ''
end
local read = ARGV[1] ~= '' and ARGV[1]
if redis.call('GET', KEYS[1]) ~= read then return 0 end
if not read and override() ~= ARGV[2] then return 0 end
if ARGV[3] ~= '' then
  if ARGV[4] == '' then
    redis.call('SET', KEYS[1], ARGV[3], 'KEEPTTL')
  else
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  end
end
if ARGV[5] == '-' then
  redis.call('DEL', KEYS[2])
elseif ARGV[5] ~= '' then
  local limit, ends = string.match(ARGV[5], '^(%d+)@(%-?%d+)$')
  if limit then
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[2], 'limit', limit, 'until', ends)
    redis.call('PEXPIRE', KEYS[2], ARGV[6])
  else
    redis.call('SET', KEYS[2], ARGV[5])
  end
end
return 1
