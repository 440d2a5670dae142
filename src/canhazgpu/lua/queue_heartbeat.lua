-- Waiters' heartbeats: keep each one's place and whatever it was granted so far, then let
-- the queue take any GPU that has come free. One call renews every waiter of a process (the
-- daemon's thousands, a CLI's one): the work of a beat is one script, not one per waiter.
-- ARG: wids (csv), ttl_ms
-- Returns {'OK', json {wid: status}}; a waiter no longer queued nor granted has position 0
-- and done false.
local n, bad = check_pool()
if bad then return bad end
local S = load_state(n)
local ttl = tonumber(ARG.ttl_ms)
local wids = {}
for wid in string.gmatch(ARG.wids, '[^,]+') do
  wids[#wids + 1] = wid
  if redis.call('ZSCORE', KEYS[K_Q_DEADLINES], wid) then
    redis.call('ZADD', KEYS[K_Q_DEADLINES], NOW + ttl, wid)
    for _, i in ipairs(gpus_of(S, wid)) do
      if S.leases[i] == wid then put_hold(S, i, S.holds[i], ttl) end
    end
  end
end
sweep(S)
grant_queue(S)
local out = {}
for _, wid in ipairs(wids) do
  out[#out + 1] = cjson.encode(wid) .. ':' .. status_json(waiter_status(S, wid))
end
return {'OK', '{' .. table.concat(out, ',') .. '}'}
