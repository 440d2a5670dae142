-- Read-only: everything the views show of one host at one instant, in one reply (the views
-- across hosts read each host with this one call: store.read_view). Changes nothing.
-- ARG: lease_prefix (the key of GPU i's lease is lease_prefix .. i: the caller cannot pass
--      the lease keys, the pool size is read here)
-- Returns {'OK', now_ms, pool, holds, released, q:order, q:waiters, q:deadlines (with
--          scores), leases (one per GPU of the pool, false when none), {snapshot doc,
--          scanned_ms}}: hashes as flat field/value lists, as HGETALL gives them.
-- Without _lib.lua (store.WITHOUT_LIB): its definitions would cost more than this read.
local t = redis.call('TIME')
local NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pool = redis.call('HGETALL', KEYS[K_POOL])
local count = 0
for k = 1, #pool, 2 do
  if pool[k] == 'count' then count = tonumber(pool[k + 1]) or 0 end
end
local leases = {}
if count >= 1 and count <= 100000 and count == math.floor(count) then
  for first = 0, count - 1, 1000 do  -- MGET in slices: unpack() is bounded by Lua's stack
    local keys = {}
    for i = first, math.min(first + 999, count - 1) do
      keys[#keys + 1] = ARG.lease_prefix .. i
    end
    local vals = redis.call('MGET', unpack(keys))
    for j = 1, #keys do leases[#leases + 1] = vals[j] end
  end
end
return {'OK', NOW, pool, redis.call('HGETALL', KEYS[K_HOLDS]),
        redis.call('HGETALL', KEYS[K_RELEASED]), redis.call('ZRANGE', KEYS[K_Q_ORDER], 0, -1),
        redis.call('HGETALL', KEYS[K_Q_WAITERS]),
        redis.call('ZRANGE', KEYS[K_Q_DEADLINES], 0, -1, 'WITHSCORES'), leases,
        redis.call('HMGET', KEYS[K_SNAPSHOT], 'doc', 'scanned_ms')}
