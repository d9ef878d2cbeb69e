-- Argo CD health for KerasTrainingJob: Healthy once trained, Degraded when it failed,
-- Suspended while Kueue holds it, Progressing otherwise.
hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end
local phase = obj.status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Queued" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
hs.message = obj.status.message or phase
return hs
