-- Shared prelude, prepended by store.py to every script but those of store.WITHOUT_LIB
-- (Redis has no includes), after the generated constants: K_* (key positions, from
-- store.KEYS), LEASE0, CHANNEL, HOST and ARG (this script's values by name, from
-- store.ARGS). KEYS after the fixed ones: lease:0..N-1,
-- then q:wants:0..N-1 (the id-waiters wanting GPU i, by arrival).
local ENDED_KEEP_MS = 86400000
local HISTORY_CAP = 100000
local STREAM_CAP = 10000
local TRIM_EVERY = 64  -- events: the ended set and the history are trimmed this often

local t = redis.call('TIME')
local NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local SPAN = (#KEYS - LEASE0 + 1) / 2  -- GPUs whose keys the caller passed
local N = SPAN  -- the pool size the script works on (pool.lua changes it)

local function lease_key(i) return KEYS[LEASE0 + i] end
local function wants_key(i) return KEYS[LEASE0 + SPAN + i] end

local function pool_count()
  return tonumber(redis.call('HGET', KEYS[K_POOL], 'count') or '0') or 0
end

-- Scripts run against a pool size the caller read earlier; a resize in between is STALE.
local function check_pool()
  local n = pool_count()
  if n == 0 then return nil, {'NOPOOL', ''} end
  if N ~= n then return nil, {'STALE', tostring(n)} end
  return n, nil
end

local function csv_ids(s)
  local out = {}
  if not s or s == '' then return out end
  for x in string.gmatch(s, '[^,]+') do out[#out + 1] = tonumber(x) end
  return out
end

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

local function ids_json(list)
  if #list == 0 then return '[]' end
  return cjson.encode(list)
end

-- Publish on the host's channel (and on `also`, a waiter's own channel) and append to the
-- host's capped stream, from which a reader that was away replays what it missed.
local function publish(ev, also)
  ev.v = 1
  ev.host = HOST
  ev.time_ms = NOW
  ev.seq = redis.call('INCR', KEYS[K_SEQ])
  if ev.seq % TRIM_EVERY == 0 then  -- a few entries over their limits cost less than a
    -- trim on every change: each is two more calls into Redis
    redis.call('ZREMRANGEBYSCORE', KEYS[K_ENDED], '-inf', NOW - ENDED_KEEP_MS)
    redis.call('ZREMRANGEBYRANK', KEYS[K_HISTORY], 0, -HISTORY_CAP - 1)
  end
  local doc = cjson.encode(ev)
  redis.call('XADD', KEYS[K_STREAM], 'MAXLEN', '~', STREAM_CAP, '*', 'doc', doc)
  redis.call('PUBLISH', CHANNEL, doc)
  if also then redis.call('PUBLISH', CHANNEL .. ':' .. also, doc) end
end

-- ---------------------------------------------------------------- holds, read once
-- S.rids: gpu -> the rid of its stored hold (read without decoding the JSON: most scripts
-- need nothing else), S.holds: gpu -> the hold, decoded on first use (an unreadable one is a
-- stand-in that no lease names, so the sweep finalizes it), S.leases: gpu -> the rid its
-- lease names (or false). Work stays proportional to the GPUs a script looks at.
-- A hold's rid without decoding it: cjson writes `"rid":"..."`, found by a plain search
-- (a third of a pattern's cost, for every hold of every script); anything else by the
-- pattern.
local function rid_of(raw)
  local s = string.find(raw, '"rid":"', 1, true)
  if s then
    local e = string.find(raw, '"', s + 7, true)
    if e then return string.sub(raw, s + 7, e - 1) end
  end
  return string.match(raw, '"rid"%s*:%s*"([^"]*)"') or '?'
end

local function load_state(n)
  local S = {rids = {}, raw = {}, leases = {}}
  S.holds = setmetatable({}, {__index = function(t, i)
    local raw = S.raw[i]
    if raw == nil then return nil end
    local ok, h = pcall(cjson.decode, raw)
    if not ok or type(h) ~= 'table' or type(h.rid) ~= 'string' then
      h = {rid = '?', user = '?', kind = '?', start_ms = NOW, corrupt = true}
    end
    rawset(t, i, h)
    return h
  end})
  local raw = redis.call('HGETALL', KEYS[K_HOLDS])
  for k = 1, #raw, 2 do
    local i = tonumber(raw[k])
    if i then
      S.raw[i] = raw[k + 1]
      S.rids[i] = rid_of(raw[k + 1])
    end
  end
  if n > 0 then
    local keys = {}
    for i = 0, n - 1 do keys[#keys + 1] = lease_key(i) end
    local vals = redis.call('MGET', unpack(keys))
    for i = 0, n - 1 do S.leases[i] = vals[i + 1] end
  end
  return S
end

local function gpus_of(S, rid)
  local out = {}
  for i, r in pairs(S.rids) do
    if r == rid then out[#out + 1] = i end
  end
  table.sort(out)
  return out
end

-- Write one GPU's hold for `base` (a reservation record or the current hold) with a fresh
-- lease of ttl ms: the one place a lease is granted or renewed.
local function put_hold(S, i, base, ttl_ms)
  local h = {}
  for k, v in pairs(base) do h[k] = v end
  h.gpu = i
  h.start_ms = h.start_ms or NOW
  h.heartbeat_ms = NOW
  h.deadline_ms = NOW + ttl_ms
  if h.kind == 'manual' then h.expires_ms = NOW + ttl_ms end
  local doc = cjson.encode(h)
  redis.call('HSET', KEYS[K_HOLDS], tostring(i), doc)
  redis.call('SET', lease_key(i), h.rid, 'PX', ttl_ms)
  rawset(S.holds, i, h)
  S.raw[i], S.rids[i], S.leases[i] = doc, h.rid, h.rid
end

-- Reservations ended on purpose (released, reclaimed, forced), by rid: a heartbeat must not
-- bring those back, whereas a lease that merely lapsed (Redis was away) is re-established.
local function mark_ended(rid)
  redis.call('ZADD', KEYS[K_ENDED], NOW, rid)  -- trimmed by publish
end

local function was_ended(rid)
  return redis.call('ZSCORE', KEYS[K_ENDED], rid) ~= false
end

-- End one GPU's hold: history record, last-released time, lease gone. The caller publishes
-- (publish_ended), so that one reservation ending is one event.
local function end_hold(S, i, reason)
  local h = S.holds[i]
  local end_ms = NOW
  if reason == 'expired' and tonumber(h.deadline_ms) and tonumber(h.deadline_ms) < NOW then
    end_ms = tonumber(h.deadline_ms)
  end
  redis.call('HDEL', KEYS[K_HOLDS], tostring(i))
  redis.call('DEL', lease_key(i))
  if reason ~= 'expired' then mark_ended(h.rid) end
  redis.call('HSET', KEYS[K_RELEASED], tostring(i), tostring(end_ms) .. '|' .. (h.user or ''))
  redis.call('ZADD', KEYS[K_HISTORY], end_ms, cjson.encode({
    gpu = i, rid = h.rid, user = h.user, kind = h.kind, start_ms = h.start_ms,
    end_ms = end_ms, reason = reason, note = h.note}))  -- trimmed by publish
  rawset(S.holds, i, nil)
  S.raw[i], S.rids[i], S.leases[i] = nil, nil, false
  return {gpu = i, h = h}
end

local function publish_ended(ended, reason)
  local by_rid, order = {}, {}
  for _, e in ipairs(ended) do
    local rid = e.h.rid
    if not by_rid[rid] then
      -- a release by the idle policy is a `released` event that says why
      by_rid[rid] = {type = reason == 'idle' and 'released' or reason, rid = rid,
                     user = e.h.user, kind = e.h.kind, gpus = {},
                     reason = reason == 'idle' and 'idle' or nil}
      order[#order + 1] = rid
    end
    table.insert(by_rid[rid].gpus, e.gpu)
  end
  for _, rid in ipairs(order) do
    table.sort(by_rid[rid].gpus)
    publish(by_rid[rid])
  end
end

-- End the given GPUs' holds and publish one event per reservation.
local function end_holds(S, gpus, reason)
  local ended = {}
  for _, i in ipairs(gpus) do ended[#ended + 1] = end_hold(S, i, reason) end
  publish_ended(ended, reason)
  return ended
end

-- Finalize every hold whose lease is gone: the reservation ended when its lease did.
local function sweep(S)
  local gone = {}
  for i, rid in pairs(S.rids) do
    if S.leases[i] ~= rid then gone[#gone + 1] = i end
  end
  table.sort(gone)
  return end_holds(S, gone, 'expired')
end

local RELEASED = nil  -- gpu -> {ms, user}, read (all at once) on first use
local function released(i)
  if RELEASED == nil then
    RELEASED = {}
    local raw = redis.call('HGETALL', KEYS[K_RELEASED])
    for k = 1, #raw, 2 do
      local ms, user = string.match(raw[k + 1], '^(%d+)|(.*)$')
      local g = tonumber(raw[k])
      if g then RELEASED[g] = {tonumber(ms or '0') or 0, user or ''} end
    end
  end
  local r = RELEASED[i]
  if r == nil then return 0, '' end
  return r[1], r[2]
end

-- Candidates {gpu, key} in allocation order: smallest key (last release) first, ties by id.
local function by_key_then_id(cands)
  table.sort(cands, function(a, b)
    if a.key ~= b.key then return a.key < b.key end
    return a.gpu < b.gpu
  end)
end

-- GPUs the last scan saw busy (over the threshold, or in error). A release newer than the
-- scan makes the scan's word on that GPU stale: it saw the previous holder's work.
local function busy_set()
  local v = redis.call('HMGET', KEYS[K_SNAPSHOT], 'busy', 'busy_ms')
  local since = tonumber(v[2] or '0') or 0
  local busy = {}
  for _, i in ipairs(csv_ids(v[1])) do
    if released(i) <= since then busy[i] = true end
  end
  return busy
end

-- ---------------------------------------------------------------- the FIFO queue
-- A waiter is an entry of q:waiters (wid -> request json) indexed by q:order (arrival),
-- q:deadlines (its heartbeat moves it), and q:counts (count requests) or q:wants:<i> (id
-- requests, one set per GPU they name). GPUs granted to a waiter are ordinary holds with
-- rid = wid; it is still waiting while its entry exists.

local function get_waiter(wid)
  local raw = redis.call('HGET', KEYS[K_Q_WAITERS], wid)
  if not raw then return nil end
  local ok, w = pcall(cjson.decode, raw)
  if not ok or type(w) ~= 'table' then return nil end
  return w
end

local function waiter_want(w)
  if w.mode == 'ids' then return #w.ids end
  return tonumber(w.count) or 0
end

-- Whether granting waiter w (id wid) its GPUs now would take its uid over w.limit, the
-- admin's user_gpus recorded when it queued (0: none): the GPUs the uid holds (other
-- reservations' and other waiters' partial grants alike) plus what w still needs.
local function over_limit(S, w, wid)
  local limit = tonumber(w.limit) or 0
  if limit <= 0 then return false end
  local held = 0
  for i, rid in pairs(S.rids) do  -- (S.holds decodes on demand: not iterable)
    if rid ~= wid and tostring(S.holds[i].uid) == tostring(w.uid) then held = held + 1 end
  end
  return held + waiter_want(w) > limit
end

local function is_waiting(rid)
  return redis.call('HEXISTS', KEYS[K_Q_WAITERS], rid) == 1
end

-- Remove a waiter from every index (w may be nil when its entry is unreadable).
local function unindex(wid, w)
  redis.call('HDEL', KEYS[K_Q_WAITERS], wid)
  redis.call('ZREM', KEYS[K_Q_ORDER], wid)
  redis.call('ZREM', KEYS[K_Q_DEADLINES], wid)
  redis.call('ZREM', KEYS[K_Q_COUNTS], wid)
  if w and w.mode == 'ids' then
    for _, i in ipairs(w.ids) do
      if i < SPAN then redis.call('ZREM', wants_key(i), wid) end
    end
  end
end

-- Take a waiter out of the queue, giving back whatever it holds. A waiter still queued
-- leaves ('left', with the GPUs it gave back); one whose grant was already complete is a
-- reservation like any other, and ends as 'released'. Every change has its event.
local function drop_waiter(S, wid, reason)
  local w = get_waiter(wid)
  local queued = redis.call('ZSCORE', KEYS[K_Q_ORDER], wid) ~= false
  unindex(wid, w)
  local mine = gpus_of(S, wid)
  if queued then
    for _, i in ipairs(mine) do end_hold(S, i, 'released') end
    publish({type = 'left', rid = wid, user = w and w.user or '?', reason = reason,
             gpus = mine}, wid)
  else
    end_holds(S, mine, 'released')
  end
  return mine
end

local function expire_waiters(S)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[K_Q_DEADLINES], '-inf', '(' .. NOW)
  for _, wid in ipairs(gone) do drop_waiter(S, wid, 'expired') end
end

-- The earliest waiter in an index ZSET: {wid, at} or nil; leftovers of gone waiters removed.
-- The first live waiter of queue `key`, past those in `skip` (waiting for their user to
-- hold fewer GPUs: over_limit); entries of waiters gone are dropped on the way.
local function head(key, skip)
  local from = 0
  while true do
    local r = redis.call('ZRANGE', key, from, from + 63, 'WITHSCORES')
    if #r == 0 then return nil end
    local dropped = 0
    for k = 1, #r, 2 do
      if not is_waiting(r[k]) then
        redis.call('ZREM', key, r[k])
        dropped = dropped + 1
      elseif not (skip and skip[r[k]]) then
        return {wid = r[k], at = tonumber(r[k + 1])}
      end
    end
    from = from + #r / 2 - dropped
  end
end

local function earlier(a, b)
  if a == nil then return b end
  if b == nil then return a end
  if b.at < a.at then return b end
  return a
end

-- GPUs some waiter could use: every GPU while a count request waits, else those named.
local function queue_claims()
  local claims = {}
  if redis.call('ZCARD', KEYS[K_Q_ORDER]) == 0 then return claims end
  if redis.call('ZCARD', KEYS[K_Q_COUNTS]) > 0 then
    for i = 0, N - 1 do claims[i] = true end
  else
    for i = 0, N - 1 do
      if redis.call('ZCARD', wants_key(i)) > 0 then claims[i] = true end
    end
  end
  return claims
end

-- Hand free GPUs to the queue in strict arrival order: a free GPU goes to the earliest
-- waiter that can use it (the head of q:counts or of its q:wants set), and a waiter may
-- hold some GPUs while it waits for the rest. Work is proportional to the free GPUs and the
-- waiters served, never to the length of the queue.
local function grant_queue(S)
  if redis.call('ZCARD', KEYS[K_Q_ORDER]) == 0 then return end
  expire_waiters(S)
  local busy = busy_set()
  local free = {}
  for i = 0, N - 1 do
    if not S.rids[i] and not busy[i] then free[#free + 1] = i end
  end
  if #free == 0 then return end
  local served, skipped = {}, {}
  local counts, heads = head(KEYS[K_Q_COUNTS], skipped), {}
  for _, g in ipairs(free) do heads[g] = head(wants_key(g), skipped) end
  while #free > 0 do
    local best = nil
    for _, g in ipairs(free) do
      local c = earlier(heads[g], counts)
      if c and not served[c.wid] and (best == nil or c.at < best.at) then best = c end
    end
    if best == nil then return end
    served[best.wid] = true
    local w = get_waiter(best.wid)
    if w == nil then  -- unreadable entry: it leaves, and the heads are read again
      drop_waiter(S, best.wid, 'corrupt')
      counts = head(KEYS[K_Q_COUNTS], skipped)
      for _, g in ipairs(free) do heads[g] = head(wants_key(g), skipped) end
    elseif over_limit(S, w, best.wid) then
      -- its user holds their limit now: it waits (granted once they release), and the
      -- waiters behind it are served meanwhile
      skipped[best.wid] = true
      counts = head(KEYS[K_Q_COUNTS], skipped)
      for _, g in ipairs(free) do heads[g] = head(wants_key(g), skipped) end
    else
      local cands, rest = {}, {}
      for _, g in ipairs(free) do
        local c = earlier(heads[g], counts)
        if c and c.wid == best.wid then
          cands[#cands + 1] = {gpu = g, key = released(g)}
        end
      end
      by_key_then_id(cands)
      local need = waiter_want(w) - #gpus_of(S, best.wid)
      local took = {}
      for k = 1, math.min(need, #cands) do
        put_hold(S, cands[k].gpu, w.base, tonumber(w.ttl_ms))
        took[cands[k].gpu] = true
      end
      for _, g in ipairs(free) do
        if not took[g] then rest[#rest + 1] = g end
      end
      free = rest
      local mine = gpus_of(S, best.wid)
      if #mine >= waiter_want(w) then
        for _, i in ipairs(mine) do  -- the reservation starts now that it is complete
          local h = S.holds[i]
          h.start_ms = NOW
          put_hold(S, i, h, tonumber(w.ttl_ms))
        end
        unindex(best.wid, w)
        publish({type = 'granted', rid = best.wid, user = w.user, gpus = mine,
                 complete = true}, best.wid)
        if w.mode == 'ids' then
          for _, g in ipairs(free) do heads[g] = head(wants_key(g), skipped) end
        else
          counts = head(KEYS[K_Q_COUNTS], skipped)
        end
      elseif next(took) ~= nil then
        publish({type = 'granted', rid = best.wid, user = w.user, gpus = mine,
                 complete = false})
      end
    end
  end
end

-- Where a waiter stands: {position (1-based; 0 once out of the queue), gpus, done, queued}.
local function waiter_status(S, wid)
  local rank = redis.call('ZRANK', KEYS[K_Q_ORDER], wid)
  local pos = rank and (rank + 1) or 0
  local gpus = gpus_of(S, wid)
  return {position = pos, gpus = gpus, done = pos == 0 and #gpus > 0,
          queued = redis.call('ZCARD', KEYS[K_Q_ORDER])}
end

local function status_json(st)
  local gpus = st.gpus
  st.gpus = nil
  local doc = cjson.encode(st)
  st.gpus = gpus
  -- cjson writes an empty table as {}: splice the list in by hand
  return string.sub(doc, 1, -2) .. ',"gpus":' .. ids_json(gpus) .. '}'
end
