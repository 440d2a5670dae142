-- A user's own notification rules (docs/notify.md): one hash of the host, uid -> JSON
-- {user, rules = [...]}. Called with that one key (KEYS[1]). Publishes nothing: a rule's URL
-- may hold a token, and events are readable by every user.
-- ARG: op ('add' | 'remove'), uid, user (the caller's name), rule (add: the rule's JSON,
--      with its id; remove: the id, or '*' for all)
-- Returns {'OK', json of the uid's rules now} | {'FULL', max} | {'NOTFOUND', id}
local MAX_RULES = 20
local RULES = KEYS[1]
local doc = {user = ARG.user, rules = {}}
local raw = redis.call('HGET', RULES, ARG.uid)
if raw then
  local ok, old = pcall(cjson.decode, raw)
  if ok and type(old) == 'table' and type(old.rules) == 'table' then doc.rules = old.rules end
end
if ARG.op == 'add' then
  if #doc.rules >= MAX_RULES then return {'FULL', tostring(MAX_RULES)} end
  doc.rules[#doc.rules + 1] = cjson.decode(ARG.rule)
else
  local kept = {}
  for _, r in ipairs(doc.rules) do
    if ARG.rule ~= '*' and r.id ~= ARG.rule then kept[#kept + 1] = r end
  end
  if ARG.rule ~= '*' and #kept == #doc.rules then return {'NOTFOUND', ARG.rule} end
  doc.rules = kept
end
if #doc.rules == 0 then
  redis.call('HDEL', RULES, ARG.uid)
  return {'OK', '[]'}
end
local out = cjson.encode(doc)
redis.call('HSET', RULES, ARG.uid, out)
return {'OK', cjson.encode(doc.rules)}
