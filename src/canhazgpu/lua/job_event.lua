-- Announce a detached job's step (job_submitted, job_started, job_ended): the job itself
-- lives in its owner's files, not in Redis; its reservation is an ordinary hold.
-- ARG: event (json: type, job, name, user, uid, rid, gpus, state, exit_code, reason)
-- Returns {'OK', ''}
local ev = cjson.decode(ARG.event)
if ev.type ~= 'job_submitted' and ev.type ~= 'job_started' and ev.type ~= 'job_ended' then
  return {'BADTYPE', tostring(ev.type)}
end
-- no GPUs (queued, or ended before it ran): no gpus field, as `queued` has none (cjson
-- would write the empty list as {}, which readers of a list choke on)
if type(ev.gpus) == 'table' and next(ev.gpus) == nil then ev.gpus = nil end
publish(ev)
return {'OK', ''}
