-- Reserve GPUs by count (LRU by last release, ties by lowest id; or MRU for this user)
-- or by ids (all or nothing). GPUs in unreserved use or in error are never handed out.
-- ARGV: 3 mode ('count'|'ids'), 4 count or ids csv, 5 unreserved ids csv, 6 error ids csv,
--       7 reservation json (rid, user, uid, host, pid, pid_start, kind, note), 8 ttl ms,
--       9 strategy ('lru'|'mru'), 10 the caller's own scan as a usage snapshot ('' when
--       the daemon's was used), kept so the queue knows which GPUs are busy
-- Returns {'OK', ids} | {'SHORT', available, unreserved} | {'UNAVAILABLE', reasons} |
--         {'NOPOOL'|'STALE', ...}
local n, bad = check_pool()
if bad then return bad end
if ARGV[10] ~= '' then redis.call('SET', KEYS[K_USAGE], ARGV[10]) end
sweep(n)
grant_queue(n)

local mode, want = ARGV[3], ARGV[4]
local unreserved, errored = set_of(csv_ids(ARGV[5])), set_of(csv_ids(ARGV[6]))
local base = cjson.decode(ARGV[7])
local ttl = tonumber(ARGV[8])
local holds = all_holds(n)
local reserved_for_queue = queue_claims(n)

local function blocked(i)
  if holds[i] then return 'held by ' .. (holds[i].user or '?') end
  if unreserved[i] then return 'in use without reservation' end
  if errored[i] then return 'in error' end
  if reserved_for_queue[i] then return 'promised to the queue' end
  return nil
end

local chosen = {}
if mode == 'ids' then
  local reasons = {}
  for _, i in ipairs(csv_ids(want)) do
    local why = blocked(i)
    if why then reasons[#reasons + 1] = {gpu = i, reason = why} end
    chosen[#chosen + 1] = i
  end
  if #reasons > 0 then return {'UNAVAILABLE', cjson.encode(reasons)} end
else
  local count = tonumber(want)
  local cands, n_unreserved = {}, 0
  for i = 0, n - 1 do
    if not holds[i] and unreserved[i] then n_unreserved = n_unreserved + 1 end
    if not blocked(i) then
      local ms, by = released_ms(i)
      local key = ms
      -- MRU for this user: their own most recent GPUs first, then everyone else's by LRU.
      if ARGV[9] == 'mru' and by == base.user then key = -ms end
      cands[#cands + 1] = {gpu = i, key = key}
    end
  end
  if #cands < count then return {"SHORT", tostring(#cands) .. "," .. tostring(n_unreserved)} end
  by_key_then_id(cands)
  for k = 1, count do chosen[k] = cands[k].gpu end
  table.sort(chosen)
end

for _, i in ipairs(chosen) do put_hold(i, base, ttl) end
publish({type = 'reserved', rid = base.rid, user = base.user, kind = base.kind,
         gpus = chosen, note = base.note, ttl_ms = ttl})
return {'OK', ids_json(chosen)}
