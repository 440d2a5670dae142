-- A waiter's heartbeat: keep its place and whatever it was granted so far, then let the
-- queue take any GPU that has come free. ARG: wid, ttl_ms
-- Returns {'OK', status json} | {'GONE', ''} when the waiter is no longer queued or granted
local n, bad = check_pool()
if bad then return bad end
local S = load_state(n)
local wid, ttl = ARG.wid, tonumber(ARG.ttl_ms)
if redis.call('ZSCORE', KEYS[K_Q_DEADLINES], wid) then
  redis.call('ZADD', KEYS[K_Q_DEADLINES], NOW + ttl, wid)
  for _, i in ipairs(gpus_of(S, wid)) do
    if S.leases[i] == wid then put_hold(S, i, S.holds[i], ttl) end
  end
end
sweep(S)
grant_queue(S)
local st = waiter_status(S, wid)
if st.position == 0 and not st.done then return {'GONE', ''} end
return {'OK', status_json(st)}
