-- Keep a reservation's leases alive, and re-establish any that lapsed (Redis was
-- unreachable, or restarted without its data) when nobody else holds the GPU now. A GPU
-- whose reservation was ended on purpose (released by its owner or an admin) is lost.
-- A record naming another owner process (pid, pid_start) moves the reservation to it: a
-- Jupyter kernel's, once it runs (event 'owner', so the daemon watches the new process).
-- Authority by uid: a record of another uid than the holds' renews and moves nothing.
-- regain '0' (a client of the daemon's API): a lapsed lease is lost, never taken again,
-- and a manual reservation (kept by its duration) is not renewed.
-- ARG: rid, ids (csv), record (reservation json), ttl_ms, regain ('1' or '0')
-- Returns {'OK', lost ids} where lost GPUs are now held by another reservation,
-- {'NOTOWNER', [{gpu, user}]} when the holds of rid are another uid's,
-- {'MANUAL'} when regain is '0' and rid is a manual reservation.
local n, bad = check_pool()
if bad then return bad end
local S = load_state(n)
sweep(S)

local rid, ttl = ARG.rid, tonumber(ARG.ttl_ms)
local base = cjson.decode(ARG.record)
local lost, regained, moved, foreign = {}, {}, {}, {}
local ended = was_ended(rid)
for _, i in ipairs(csv_ids(ARG.ids)) do
  local h = S.holds[i]
  if h and h.rid == rid and tostring(h.uid) ~= tostring(base.uid) then
    foreign[#foreign + 1] = {gpu = i, user = h.user}
  end
end
if #foreign > 0 then return {'NOTOWNER', cjson.encode(foreign)} end
local regain = ARG.regain == '1'
for _, i in ipairs(csv_ids(ARG.ids)) do
  local h = S.holds[i]
  if not regain and h and h.rid == rid and h.kind == 'manual' then return {'MANUAL'} end
end
local owner
for _, i in ipairs(csv_ids(ARG.ids)) do
  local h = S.holds[i]
  if h and h.rid == rid then
    if base.pid and h.pid ~= base.pid then
      h.pid, h.pid_start = base.pid, base.pid_start
      moved[#moved + 1] = i
      owner = h
    end
    put_hold(S, i, h, ttl)
  elseif h or i >= n or ended or not regain then
    lost[#lost + 1] = i
  else
    put_hold(S, i, base, ttl)
    regained[#regained + 1] = i
  end
end
if #regained > 0 then
  publish({type = 'reserved', rid = rid, user = base.user, kind = base.kind,
           gpus = regained, note = base.note, ttl_ms = ttl, reacquired = true})
end
if #moved > 0 then
  publish({type = 'owner', rid = rid, user = owner.user, kind = owner.kind, gpus = moved,
           pid = base.pid})
end
return {'OK', ids_json(lost)}
