-- Shared prelude, prepended by store.py to every script (Redis has no includes).
-- KEYS: 1 pool, 2 holds, 3 released, 4 history, 5 seq, 6 queue, 7 waiters, 8 usage,
--       9 ended, 10.. lease:0..N-1
-- ARGV: 1 events channel, 2 host, 3.. the operation's own values
local K_POOL, K_HOLDS, K_RELEASED, K_HISTORY, K_SEQ, K_QUEUE, K_WAITERS, K_USAGE, K_ENDED =
  1, 2, 3, 4, 5, 6, 7, 8, 9
local LEASE0 = 10
local ENDED_KEEP_MS = 86400000
local CHANNEL, HOST = ARGV[1], ARGV[2]
local HISTORY_CAP = 100000

local t = redis.call('TIME')
local NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function lease_key(i) return KEYS[LEASE0 + i] end

local function pool_count()
  return tonumber(redis.call('HGET', KEYS[K_POOL], 'count') or '0')
end

-- Scripts run against a pool size the caller read earlier; a resize in between is STALE.
local function check_pool()
  local n = pool_count()
  if n == 0 then return nil, {'NOPOOL', ''} end
  if #KEYS - LEASE0 + 1 ~= n then return nil, {'STALE', tostring(n)} end
  return n, nil
end

local function csv_ids(s)
  local out = {}
  if s == nil or s == '' then return out end
  for x in string.gmatch(s, '[^,]+') do out[#out + 1] = tonumber(x) end
  return out
end

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

-- Publish on the host's channel; also on `also` (a waiter's own channel), if given.
local function publish(ev, also)
  ev.v = 1
  ev.host = HOST
  ev.time_ms = NOW
  ev.seq = redis.call('INCR', KEYS[K_SEQ])
  local doc = cjson.encode(ev)
  redis.call('PUBLISH', CHANNEL, doc)
  if also then redis.call('PUBLISH', CHANNEL .. ':' .. also, doc) end
end

local function get_hold(i)
  local raw = redis.call('HGET', KEYS[K_HOLDS], tostring(i))
  if not raw then return nil end
  local ok, h = pcall(cjson.decode, raw)
  if not ok then return {rid = '?', user = '?', kind = '?', start_ms = NOW, corrupt = true} end
  return h
end

-- A hold is live while its lease key exists and names the same reservation.
local function is_live(i, h)
  return h ~= nil and redis.call('GET', lease_key(i)) == h.rid
end

-- All current holds: {gpu -> hold}, live or not.
local function all_holds(n)
  local out = {}
  for i = 0, n - 1 do
    local h = get_hold(i)
    if h then out[i] = h end
  end
  return out
end

-- Reservations ended on purpose (released, reclaimed, forced), by rid: a heartbeat must not
-- bring those back, whereas a lease that merely lapsed (Redis was away) is re-established.
local function mark_ended(rid)
  redis.call('ZADD', KEYS[K_ENDED], NOW, rid)
  redis.call('ZREMRANGEBYSCORE', KEYS[K_ENDED], '-inf', NOW - ENDED_KEEP_MS)
end

local function was_ended(rid)
  return redis.call('ZSCORE', KEYS[K_ENDED], rid) ~= false
end

-- End one GPU's hold: history record, last-released time, lease gone. No event (grouped by caller).
local function end_hold(i, h, reason)
  local end_ms = NOW
  if reason == 'expired' and h.deadline_ms and tonumber(h.deadline_ms) < NOW then
    end_ms = tonumber(h.deadline_ms)
  end
  redis.call('HDEL', KEYS[K_HOLDS], tostring(i))
  redis.call('DEL', lease_key(i))
  if reason ~= 'expired' then mark_ended(h.rid) end
  redis.call('HSET', KEYS[K_RELEASED], tostring(i), tostring(end_ms) .. '|' .. (h.user or ''))
  redis.call('ZADD', KEYS[K_HISTORY], end_ms, cjson.encode({
    gpu = i, rid = h.rid, user = h.user, kind = h.kind, start_ms = h.start_ms,
    end_ms = end_ms, reason = reason, note = h.note}))
  redis.call('ZREMRANGEBYRANK', KEYS[K_HISTORY], 0, -HISTORY_CAP - 1)
end

-- Group ended GPUs by reservation so one reservation ending is one event.
local function publish_ended(ended, reason)
  local by_rid, order = {}, {}
  for _, e in ipairs(ended) do
    local rid = e.h.rid
    if not by_rid[rid] then
      by_rid[rid] = {type = reason, rid = rid, user = e.h.user, kind = e.h.kind, gpus = {}}
      order[#order + 1] = rid
    end
    table.insert(by_rid[rid].gpus, e.gpu)
  end
  for _, rid in ipairs(order) do publish(by_rid[rid]) end
end

-- Finalize every hold whose lease is gone: the reservation ended when its lease did.
local function sweep(n)
  local ended = {}
  for i = 0, n - 1 do
    local h = get_hold(i)
    if h and not is_live(i, h) then
      end_hold(i, h, 'expired')
      ended[#ended + 1] = {gpu = i, h = h}
    end
  end
  publish_ended(ended, 'expired')
  return ended
end

-- Write a hold and its lease for one GPU of reservation `base` (a decoded table).
local function put_hold(i, base, ttl_ms)
  local h = {}
  for k, v in pairs(base) do h[k] = v end
  h.gpu = i
  h.start_ms = h.start_ms or NOW
  h.heartbeat_ms = NOW
  h.deadline_ms = NOW + ttl_ms
  if h.kind == 'manual' then h.expires_ms = NOW + ttl_ms end
  redis.call('HSET', KEYS[K_HOLDS], tostring(i), cjson.encode(h))
  redis.call('SET', lease_key(i), h.rid, 'PX', ttl_ms)
end

local function released_ms(i)
  local raw = redis.call('HGET', KEYS[K_RELEASED], tostring(i))
  if not raw then return 0, '' end
  local ms, user = string.match(raw, '^(%d+)|(.*)$')
  return tonumber(ms or '0'), user or ''
end

-- Candidates {gpu, key} in allocation order: smallest key (last release) first, ties by id.
local function by_key_then_id(cands)
  table.sort(cands, function(a, b)
    if a.key ~= b.key then return a.key < b.key end
    return a.gpu < b.gpu
  end)
end

local function ids_json(list)
  if #list == 0 then return '[]' end
  return cjson.encode(list)
end

-- ---------------------------------------------------------------- the FIFO queue
-- Waiters (hash K_WAITERS, wid -> json) in arrival order (list K_QUEUE). A waiter is alive
-- while its deadline_ms (refreshed by its heartbeat) is in the future. GPUs granted to a
-- waiter are ordinary holds under rid = wid, marked waiting until the grant is complete.

-- GPUs the last usage snapshot saw busy (over the threshold, or in error). A release newer
-- than the scan makes the scan's word on that GPU stale: it saw the previous holder's work.
local function usage_busy()
  local raw = redis.call('GET', KEYS[K_USAGE])
  if not raw then return {} end
  local ok, u = pcall(cjson.decode, raw)
  if not ok or type(u) ~= 'table' then return {} end
  local busy = {}
  for _, i in ipairs(u.busy or {}) do
    if released_ms(i) <= tonumber(u.scanned_ms or 0) then busy[i] = true end
  end
  return busy
end

local function get_waiter(wid)
  local raw = redis.call('HGET', KEYS[K_WAITERS], wid)
  if not raw then return nil end
  local ok, w = pcall(cjson.decode, raw)
  if not ok then return nil end
  return w
end

local function waiter_want(w)
  if w.mode == 'ids' then return #w.ids end
  return tonumber(w.count)
end

local function waiter_gpus(n, wid)
  local out = {}
  for i = 0, n - 1 do
    local h = get_hold(i)
    if h and h.rid == wid then out[#out + 1] = i end
  end
  return out
end

-- Take a waiter out of the queue, giving back whatever it was granted so far.
local function drop_waiter(n, wid, reason)
  local w = get_waiter(wid)
  redis.call('LREM', KEYS[K_QUEUE], 0, wid)
  redis.call('HDEL', KEYS[K_WAITERS], wid)
  local ended = {}
  for _, i in ipairs(waiter_gpus(n, wid)) do
    local h = get_hold(i)
    end_hold(i, h, 'released')
    ended[#ended + 1] = i
  end
  if w then
    publish({type = 'left', rid = wid, user = w.user, reason = reason, gpus = ended}, wid)
  end
  return ended
end

-- GPUs some waiter still in the queue could use: a count waiter can use any GPU.
local function queue_claims(n)
  local claims = {}
  for _, wid in ipairs(redis.call('LRANGE', KEYS[K_QUEUE], 0, -1)) do
    local w = get_waiter(wid)
    if w and tonumber(w.deadline_ms) >= NOW then
      if w.mode ~= 'ids' then
        for i = 0, n - 1 do claims[i] = true end
        return claims
      end
      for _, i in ipairs(w.ids) do claims[i] = true end
    end
  end
  return claims
end

-- Hand free GPUs to the queue in strict arrival order. A waiter may hold some GPUs while
-- it waits for the rest; nobody behind it takes a GPU it could use.
local function grant_queue(n)
  local wids = redis.call('LRANGE', KEYS[K_QUEUE], 0, -1)
  if #wids == 0 then return end
  local busy = usage_busy()
  local claimed, all_claimed = {}, false
  for _, wid in ipairs(wids) do
    local w = get_waiter(wid)
    if not w then
      redis.call('LREM', KEYS[K_QUEUE], 0, wid)
    elseif tonumber(w.deadline_ms) < NOW then
      drop_waiter(n, wid, 'expired')
    elseif not all_claimed then
      local mine = waiter_gpus(n, wid)
      local need = waiter_want(w) - #mine
      local allowed = nil
      if w.mode == 'ids' then allowed = set_of(w.ids) end
      local cands = {}
      for i = 0, n - 1 do
        if not get_hold(i) and not busy[i] and not claimed[i]
            and (allowed == nil or allowed[i]) then
          cands[#cands + 1] = {gpu = i, key = released_ms(i)}
        end
      end
      by_key_then_id(cands)
      local new = {}
      for k = 1, math.min(need, #cands) do
        local base = w.base
        base.waiting = true
        put_hold(cands[k].gpu, base, tonumber(w.ttl_ms))
        new[#new + 1] = cands[k].gpu
      end
      if #new == need then
        mine = waiter_gpus(n, wid)
        for _, i in ipairs(mine) do
          local h = get_hold(i)
          h.waiting = nil
          h.start_ms = NOW
          redis.call('HSET', KEYS[K_HOLDS], tostring(i), cjson.encode(h))
        end
        redis.call('LREM', KEYS[K_QUEUE], 0, wid)
        redis.call('HDEL', KEYS[K_WAITERS], wid)
        publish({type = 'granted', rid = wid, user = w.user, gpus = mine, complete = true}, wid)
      else
        if #new > 0 then
          publish({type = 'granted', rid = wid, user = w.user, gpus = waiter_gpus(n, wid),
                   complete = false})
        end
        if allowed == nil then all_claimed = true else
          for i, _ in pairs(allowed) do claimed[i] = true end
        end
      end
    end
  end
end

-- Where a waiter stands: {position (1-based; 0 once out of the queue), gpus, done}.
local function waiter_status(n, wid)
  local pos = 0
  for k, id in ipairs(redis.call('LRANGE', KEYS[K_QUEUE], 0, -1)) do
    if id == wid then pos = k break end
  end
  local gpus = waiter_gpus(n, wid)
  local done = pos == 0 and #gpus > 0
  return cjson.encode({position = pos, gpus = gpus, done = done,
                       queued = redis.call('LLEN', KEYS[K_QUEUE])})
end
