-- Reserve GPUs by count (LRU by last release, ties by lowest id; or MRU for this user)
-- or by ids (all or nothing). GPUs in unreserved use or in error are never handed out.
-- ARG: mode ('count'|'ids'), want (count or ids csv), unreserved (ids csv), errored (ids
--      csv), record (reservation json), ttl_ms, strategy ('lru'|'mru'), busy (the caller's
--      own scan as busy ids csv, '-' when the daemon's snapshot was used), limit (the
--      most GPUs the record's uid may hold at once; 0: no limit)
-- Returns {'OK', ids} | {'SHORT', 'available,unreserved'} | {'UNAVAILABLE', reasons} |
--         {'LIMIT', 'held,limit'} | {'NOPOOL'|'STALE', ...}
local n, bad = check_pool()
if bad then return bad end
if ARG.busy ~= '-' then
  redis.call('HSET', KEYS[K_SNAPSHOT], 'busy', ARG.busy, 'busy_ms', NOW)
end
local S = load_state(n)
sweep(S)
grant_queue(S)

local unreserved, errored = set_of(csv_ids(ARG.unreserved)), set_of(csv_ids(ARG.errored))
local base = cjson.decode(ARG.record)
local ttl = tonumber(ARG.ttl_ms)
local promised = queue_claims()

local function blocked(i)
  if S.rids[i] then return 'held by ' .. (S.holds[i].user or '?') end
  if unreserved[i] then return 'in use without reservation' end
  if errored[i] then return 'in error' end
  if promised[i] then return 'promised to the queue' end
  return nil
end

local limit = tonumber(ARG.limit)
if limit > 0 then  -- the admin's user_gpus, checked where the GPUs are taken
  local held = 0
  for i = 0, n - 1 do
    if S.rids[i] and tostring(S.holds[i].uid) == tostring(base.uid) then held = held + 1 end
  end
  local want = ARG.mode == 'ids' and #csv_ids(ARG.want) or tonumber(ARG.want)
  if held + want > limit then return {'LIMIT', held .. ',' .. limit} end
end

local chosen = {}
if ARG.mode == 'ids' then
  local reasons = {}
  for _, i in ipairs(csv_ids(ARG.want)) do
    local why = blocked(i)
    if why then reasons[#reasons + 1] = {gpu = i, reason = why} end
    chosen[#chosen + 1] = i
  end
  if #reasons > 0 then return {'UNAVAILABLE', cjson.encode(reasons)} end
else
  local count = tonumber(ARG.want)
  local cands, n_unreserved = {}, 0
  for i = 0, n - 1 do
    if not S.rids[i] and unreserved[i] then n_unreserved = n_unreserved + 1 end
    if not S.rids[i] and not blocked(i) then cands[#cands + 1] = {gpu = i} end
  end
  if #cands < count then return {'SHORT', tostring(#cands) .. ',' .. tostring(n_unreserved)} end
  for _, c in ipairs(cands) do  -- (read only when there are enough to choose from)
    local ms, by = released(c.gpu)
    -- MRU for this user: their own most recent GPUs first, then everyone else's by LRU.
    c.key = (ARG.strategy == 'mru' and by == base.user) and -ms or ms
  end
  by_key_then_id(cands)
  for k = 1, count do chosen[k] = cands[k].gpu end
  table.sort(chosen)
end

for _, i in ipairs(chosen) do put_hold(S, i, base, ttl) end
publish({type = 'reserved', rid = base.rid, user = base.user, kind = base.kind,
         gpus = chosen, note = base.note, ttl_ms = ttl})
return {'OK', ids_json(chosen)}
