-- The host registry: one hash outside every host's slot, host -> entry (JSON). This script
-- is called with that one key (KEYS[1]) and none of the host's, so it works on a cluster.
-- ARG: op ('admin': pool facts changed, daemon state kept; 'up': the daemon serves;
-- 'down': the daemon stopped; 'retire': drop the host), entry (JSON of the host's facts).
-- Stamps last_seen_ms (daemon ops) and registered_ms with Redis's clock. Returns {'OK', ''}
local REGISTRY = KEYS[1]
if ARG.op == 'retire' then
  redis.call('HDEL', REGISTRY, HOST)
  return {'OK', ''}
end
local entry = cjson.decode(ARG.entry)
local old = redis.call('HGET', REGISTRY, HOST)
local prev = {}
if old then
  local ok, doc = pcall(cjson.decode, old)
  if ok and type(doc) == 'table' then prev = doc end
end
entry.host = HOST
entry.registered_ms = prev.registered_ms or NOW
if ARG.op == 'admin' then
  entry.daemon = prev.daemon or 'none'
  entry.last_seen_ms = prev.last_seen_ms or NOW
  if (entry.models == nil or #entry.models == 0) and prev.models then entry.models = prev.models end
else
  entry.daemon = ARG.op
  entry.last_seen_ms = NOW
end
redis.call('HSET', REGISTRY, HOST, cjson.encode(entry))
return {'OK', ''}
