-- Finalize every reservation whose lease is gone (history, last released, 'expired'
-- event) and let the queue take what was freed. Safe to run any number of times.
-- Returns {'OK', ids finalized}
local n, bad = check_pool()
if bad then return bad end
local S = load_state(n)
local ended = sweep(S)
grant_queue(S)
local ids = {}
for _, e in ipairs(ended) do ids[#ids + 1] = e.gpu end
return {'OK', ids_json(ids)}
