-- End reservations. ARGV: 3 mode, 4 arg, 5 caller user, 6 caller may force ('1'|'0'),
-- 7 reason ('released'|'reclaimed')
--   mode 'rid':  every GPU of reservation arg (a run supervisor ending, or a reclaim)
--   mode 'mine': every manual reservation of the caller
--   mode 'ids':  the GPUs in arg (csv), which must all be the caller's (or forced)
--   mode 'user': every reservation of user arg (forced by an admin)
-- Returns {'OK', ids} | {'NOTHELD', ids} | {'NOTOWNER', reasons} | {'NOPOOL'|'STALE', ...}
local n, bad = check_pool()
if bad then return bad end
sweep(n)

local mode, arg, caller, force, reason = ARGV[3], ARGV[4], ARGV[5], ARGV[6] == '1', ARGV[7]
local holds = all_holds(n)
local picked = {}

if mode == 'ids' then
  local missing, foreign = {}, {}
  for _, i in ipairs(csv_ids(arg)) do
    local h = holds[i]
    if not h then
      missing[#missing + 1] = i
    elseif h.user ~= caller and not force then
      foreign[#foreign + 1] = {gpu = i, user = h.user}
    else
      picked[#picked + 1] = i
    end
  end
  if #missing > 0 then return {'NOTHELD', ids_json(missing)} end
  if #foreign > 0 then return {'NOTOWNER', cjson.encode(foreign)} end
else
  for i = 0, n - 1 do
    local h = holds[i]
    if h and ((mode == 'rid' and h.rid == arg)
        or (mode == 'mine' and h.user == caller and h.kind == 'manual' and not h.waiting)
        or (mode == 'user' and h.user == arg)) then
      picked[#picked + 1] = i
    end
  end
end

local ended = {}
for _, i in ipairs(picked) do
  end_hold(i, holds[i], reason)
  ended[#ended + 1] = {gpu = i, h = holds[i]}
end
publish_ended(ended, reason)
grant_queue(n)
return {'OK', ids_json(picked)}
