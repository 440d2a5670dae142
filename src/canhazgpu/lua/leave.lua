-- Leave the queue (Ctrl+C, --timeout), giving back any GPUs granted so far.
-- ARGV: 3 wid, 4 reason. Returns {'OK', ids given back}
local n, bad = check_pool()
if bad then return bad end
sweep(n)
local ended = drop_waiter(n, ARGV[3], ARGV[4])
grant_queue(n)
return {'OK', ids_json(ended)}
