-- End reservations. ARG: mode, target, caller (the caller's uid: authority is by uid, never
-- by name), force ('1'|'0': root, the admin group, or the daemon reclaiming), reason
-- ('released'|'reclaimed'|'idle': the idle policy, published as `released` with reason idle)
--   mode 'rid':  every GPU of reservation `target`, which must be the caller's (or forced)
--   mode 'mine': every manual reservation of the caller (not those still waiting in the queue)
--   mode 'ids':  the GPUs in `target` (csv), which must all be the caller's (or forced)
--   mode 'user': every reservation of user `target` (forced by an admin)
-- Returns {'OK', ids} | {'NOTHELD', ids} | {'NOTOWNER', reasons} | {'NOPOOL'|'STALE', ...}
local n, bad = check_pool()
if bad then return bad end
local S = load_state(n)
sweep(S)

local mode, target, caller, force = ARG.mode, ARG.target, ARG.caller, ARG.force == '1'
local picked = {}
local function mine(h) return tostring(h.uid) == caller end

if mode == 'ids' then
  local missing, foreign = {}, {}
  for _, i in ipairs(csv_ids(target)) do
    local h = S.holds[i]
    if not h then
      missing[#missing + 1] = i
    elseif not mine(h) and not force then
      foreign[#foreign + 1] = {gpu = i, user = h.user}
    else
      picked[#picked + 1] = i
    end
  end
  if #missing > 0 then return {'NOTHELD', ids_json(missing)} end
  if #foreign > 0 then return {'NOTOWNER', cjson.encode(foreign)} end
else
  if mode == 'rid' and not force then
    local foreign = {}
    for i = 0, n - 1 do
      if S.rids[i] == target and not mine(S.holds[i]) then
        foreign[#foreign + 1] = {gpu = i, user = S.holds[i].user}
      end
    end
    if #foreign > 0 then return {'NOTOWNER', cjson.encode(foreign)} end
  end
  for i = 0, n - 1 do
    local rid = S.rids[i]
    if rid and ((mode == 'rid' and rid == target)
        or (mode == 'mine' and mine(S.holds[i]) and S.holds[i].kind == 'manual'
            and not is_waiting(rid))
        or (mode == 'user' and S.holds[i].user == target)) then
      picked[#picked + 1] = i
    end
  end
end

end_holds(S, picked, ARG.reason)
grant_queue(S)
return {'OK', ids_json(picked)}
