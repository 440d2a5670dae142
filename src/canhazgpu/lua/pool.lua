-- Create or resize the pool. Refuses while reservations are live unless forced, in which
-- case they all end ('forced'). Re-initialising with the same size and provider is a no-op.
-- The caller passes the keys of max(old, new) GPUs.
-- ARG: count, provider, force ('1'|'0')
-- Returns {'OK', json {old, new}} | {'UNCHANGED', count} | {'BUSY', reasons} | {'STALE', old}
local new, provider, force = tonumber(ARG.count), ARG.provider, ARG.force == '1'
local old = pool_count()
if SPAN < math.max(old, new) then return {'STALE', tostring(old)} end
local old_provider = redis.call('HGET', KEYS[K_POOL], 'provider') or ''
local S = load_state(old)
if old > 0 then sweep(S) end
if old == new and old_provider == provider then return {'UNCHANGED', tostring(old)} end

local live = {}
for i = 0, old - 1 do
  if S.rids[i] then
    local h = S.holds[i]
    live[#live + 1] = {gpu = i, user = h.user, kind = h.kind}
  end
end
if #live > 0 and not force then return {'BUSY', cjson.encode(live)} end

local held = {}
for i = 0, old - 1 do
  if S.rids[i] then held[#held + 1] = i end
end
end_holds(S, held, 'forced')
for i = new, math.max(old, new) - 1 do redis.call('HDEL', KEYS[K_RELEASED], tostring(i)) end
redis.call('HSET', KEYS[K_POOL], 'count', tostring(new), 'provider', provider,
           'updated_ms', tostring(NOW))
publish({type = 'pool_changed', count = new, old_count = old, provider = provider})
-- Queued requests the new pool can never meet leave the queue now rather than wait forever:
-- counts above the new size, and ids at or above it.
local doomed = {}
for _, wid in ipairs(redis.call('ZRANGE', KEYS[K_Q_COUNTS], 0, -1)) do
  local w = get_waiter(wid)
  if w == nil or waiter_want(w) > new then doomed[#doomed + 1] = wid end
end
for i = new, SPAN - 1 do
  for _, wid in ipairs(redis.call('ZRANGE', wants_key(i), 0, -1)) do
    doomed[#doomed + 1] = wid
  end
end
for _, wid in ipairs(doomed) do
  if redis.call('HEXISTS', KEYS[K_Q_WAITERS], wid) == 1 then
    drop_waiter(S, wid, 'pool_changed')
  end
end
N = new
grant_queue(S)
return {'OK', cjson.encode({old = old, new = new})}
