-- Store the daemon's GPU scan as the host's snapshot, stamped with Redis's clock, and
-- publish the events the scanner derived from it, under the same sequence as every other
-- change; then let the queue take GPUs that stopped being busy.
-- ARG: snapshot (json of every GPU's facts), busy (ids csv), events (json array of events,
--      each a table with at least 'type')
-- The scanner judged 'unreserved' against holds it read before this script: a GPU reserved
-- in between is not unreserved, and its event is dropped rather than published after the
-- reservation's (the scanner judges it again on its next scan).
-- Returns {'OK', json {published = n, dropped = [gpus], scanned_ms = its stamp}}
local n, bad = check_pool()
if bad then return bad end
redis.call('HSET', KEYS[K_SNAPSHOT], 'doc', ARG.snapshot, 'scanned_ms', NOW,
           'busy', ARG.busy, 'busy_ms', NOW)
local S = load_state(n)
sweep(S)
local published, dropped = 0, {}
for _, ev in ipairs(cjson.decode(ARG.events)) do
  local g = ev.gpus and ev.gpus[1]
  if ev.type == 'unreserved_detected' and g and S.rids[g] then
    dropped[#dropped + 1] = g
  else
    publish(ev)
    published = published + 1
  end
end
grant_queue(S)
return {'OK', '{"published":' .. published .. ',"dropped":' .. ids_json(dropped) ..
        ',"scanned_ms":' .. string.format('%d', NOW) .. '}'}
