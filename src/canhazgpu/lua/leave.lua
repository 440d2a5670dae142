-- Leave the queue (Ctrl+C, --timeout), giving back any GPUs granted so far, also when the
-- grant completed just before (they end as 'released').
-- ARG: wid, reason. Returns {'OK', ids given back}
local n, bad = check_pool()
if bad then return bad end
local S = load_state(n)
sweep(S)
local ended = drop_waiter(S, ARG.wid, ARG.reason)
grant_queue(S)
return {'OK', ids_json(ended)}
