-- Keep a reservation's leases alive, and re-establish any that lapsed (Redis was
-- unreachable, or restarted without its data) when nobody else holds the GPU now. A GPU
-- whose reservation was ended on purpose (released by its owner or an admin) is lost.
-- ARGV: 3 rid, 4 ids csv, 5 reservation json, 6 ttl ms
-- Returns {'OK', lost ids} where lost GPUs are now held by another reservation.
local n, bad = check_pool()
if bad then return bad end
sweep(n)

local rid, base, ttl = ARGV[3], cjson.decode(ARGV[5]), tonumber(ARGV[6])
local lost, regained = {}, {}
for _, i in ipairs(csv_ids(ARGV[4])) do
  local h = get_hold(i)
  if h and h.rid == rid then
    h.heartbeat_ms = NOW
    h.deadline_ms = NOW + ttl
    if h.kind == 'manual' then h.expires_ms = NOW + ttl end
    redis.call('HSET', KEYS[K_HOLDS], tostring(i), cjson.encode(h))
    redis.call('SET', lease_key(i), rid, 'PX', ttl)
  elseif h or i >= n or was_ended(rid) then
    lost[#lost + 1] = i
  else
    put_hold(i, base, ttl)
    regained[#regained + 1] = i
  end
end
if #regained > 0 then
  publish({type = 'reserved', rid = rid, user = base.user, kind = base.kind,
           gpus = regained, note = base.note, ttl_ms = ttl, reacquired = true})
end
return {'OK', ids_json(lost)}
