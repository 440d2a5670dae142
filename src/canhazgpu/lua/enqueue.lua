-- Join the FIFO queue, and be granted at once if the GPUs are free.
-- ARG: waiter (json: wid, user, uid, mode, count, ids, note, kind, limit = the most GPUs
--      its uid may hold at once when granted (0: no limit), base = the reservation
--      record), ttl_ms (the waiter's lease: its heartbeat keeps it; a dead waiter leaves)
-- Returns {'OK', status json} (see waiter_status)
local n, bad = check_pool()
if bad then return bad end
local S = load_state(n)
sweep(S)
local w, ttl = cjson.decode(ARG.waiter), tonumber(ARG.ttl_ms)
w.ttl_ms, w.enqueued_ms = ttl, NOW
local at = redis.call('INCR', KEYS[K_Q_ARRIVALS])
redis.call('HSET', KEYS[K_Q_WAITERS], w.wid, cjson.encode(w))
redis.call('ZADD', KEYS[K_Q_ORDER], at, w.wid)
redis.call('ZADD', KEYS[K_Q_DEADLINES], NOW + ttl, w.wid)
if w.mode == 'ids' then
  for _, i in ipairs(w.ids) do redis.call('ZADD', wants_key(i), at, w.wid) end
else
  redis.call('ZADD', KEYS[K_Q_COUNTS], at, w.wid)
end
publish({type = 'queued', rid = w.wid, user = w.user,
         position = redis.call('ZCARD', KEYS[K_Q_ORDER]),
         count = w.count, ids = w.ids, note = w.note})
grant_queue(S)
return {'OK', status_json(waiter_status(S, w.wid))}
