-- A waiter's heartbeat: keep its place and whatever it was granted so far, then let the
-- queue take any GPU that has come free. ARGV: 3 wid, 4 waiter lease ms
-- Returns {'OK', status json} | {'GONE', ''} when the waiter is no longer queued or granted
local n, bad = check_pool()
if bad then return bad end
local wid, ttl = ARGV[3], tonumber(ARGV[4])
local w = get_waiter(wid)
if w then
  w.deadline_ms = NOW + ttl
  redis.call('HSET', KEYS[K_WAITERS], wid, cjson.encode(w))
  for _, i in ipairs(waiter_gpus(n, wid)) do
    local h = get_hold(i)
    if is_live(i, h) then
      h.heartbeat_ms, h.deadline_ms = NOW, NOW + ttl
      redis.call('HSET', KEYS[K_HOLDS], tostring(i), cjson.encode(h))
      redis.call('PEXPIRE', lease_key(i), ttl)
    end
  end
end
sweep(n)
grant_queue(n)
local st = cjson.decode(waiter_status(n, wid))
if st.position == 0 and not st.done then return {'GONE', ''} end
return {'OK', waiter_status(n, wid)}
