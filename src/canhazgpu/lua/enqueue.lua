-- Join the FIFO queue, and be granted at once if the GPUs are free.
-- ARGV: 3 waiter json (wid, user, mode, count, ids, note, base = the reservation record),
--       4 waiter lease ms (its heartbeat keeps it; a dead waiter leaves after this)
-- Returns {'OK', status json} (see waiter_status)
local n, bad = check_pool()
if bad then return bad end
sweep(n)
local w, ttl = cjson.decode(ARGV[3]), tonumber(ARGV[4])
w.ttl_ms, w.deadline_ms, w.enqueued_ms = ttl, NOW + ttl, NOW
redis.call('HSET', KEYS[K_WAITERS], w.wid, cjson.encode(w))
local position = redis.call('RPUSH', KEYS[K_QUEUE], w.wid)
publish({type = 'queued', rid = w.wid, user = w.user, position = position,
         count = w.count, ids = w.ids, note = w.note})
grant_queue(n)
return {'OK', waiter_status(n, w.wid)}
