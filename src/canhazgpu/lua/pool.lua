-- Create or resize the pool. Refuses while reservations are live unless forced, in which
-- case they all end ('forced'). Re-initialising with the same size and provider is a no-op.
-- ARGV: 3 count, 4 provider, 5 force ('1'|'0')
-- Returns {'OK', json {old, new}} | {'UNCHANGED', count} | {'BUSY', reasons}
local new, provider, force = tonumber(ARGV[3]), ARGV[4], ARGV[5] == '1'
local old = pool_count()
if #KEYS - LEASE0 + 1 < math.max(old, new) then return {'STALE', tostring(old)} end
local old_provider = redis.call('HGET', KEYS[K_POOL], 'provider') or ''
if old > 0 then sweep(old) end
if old == new and old_provider == provider then return {'UNCHANGED', tostring(old)} end

local holds = all_holds(old)
local live = {}
for i = 0, old - 1 do
  if holds[i] then live[#live + 1] = {gpu = i, user = holds[i].user, kind = holds[i].kind} end
end
if #live > 0 and not force then return {'BUSY', cjson.encode(live)} end

local ended = {}
for i = 0, old - 1 do
  if holds[i] then
    end_hold(i, holds[i], 'forced')
    ended[#ended + 1] = {gpu = i, h = holds[i]}
  end
end
publish_ended(ended, 'forced')
for i = new, math.max(old, new) - 1 do redis.call('HDEL', KEYS[K_RELEASED], tostring(i)) end
redis.call('HSET', KEYS[K_POOL], 'count', tostring(new), 'provider', provider,
           'updated_ms', tostring(NOW))
publish({type = 'pool_changed', count = new, old_count = old, provider = provider})
-- Queued requests the new pool can never meet leave the queue now rather than wait forever.
for _, wid in ipairs(redis.call('LRANGE', KEYS[K_QUEUE], 0, -1)) do
  local w = get_waiter(wid)
  local fits = w ~= nil and waiter_want(w) <= new
  if fits and w.mode == 'ids' then
    for _, i in ipairs(w.ids) do if i >= new then fits = false end end
  end
  if w and not fits then drop_waiter(math.max(old, new), wid, 'pool_changed') end
end
grant_queue(new)
return {'OK', cjson.encode({old = old, new = new})}
