-- Store a GPU usage snapshot and publish the events the scanner derived from it, under the
-- same sequence as every other change; then let the queue take GPUs that stopped being busy.
-- ARGV: 3 snapshot json, 4 json array of events (each a table with at least 'type')
-- Returns {'OK', number of events published}
local n, bad = check_pool()
if bad then return bad end
redis.call('SET', KEYS[K_USAGE], ARGV[3])
local events = cjson.decode(ARGV[4])
for _, ev in ipairs(events) do publish(ev) end
sweep(n)
grant_queue(n)
return {'OK', tostring(#events)}
