-- Argo CD health check for lifeline.dev/v1alpha1 BotPool.
-- Runs in Argo CD's Lua 5.1 sandbox: `obj` is the live object; return {status, message}.
local hs = {}

local function condition(ctype)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status and obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for lifeline to observe generation " .. tostring(generation)
  return hs
end

local available = condition("Available")
if available == nil or available.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Waiting for bot pods"
  return hs
end
if available.status ~= "True" then
  hs.status = "Degraded"
  hs.message = describe(available)
  return hs
end

-- Available, but replicas.max cannot cover the calls assigned to the pool:
-- calls beyond its capacity are not answered by bots.
local limited = condition("ScalingLimited")
if limited ~= nil and limited.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(limited)
  return hs
end

local ready = obj.status.readyReplicas or 0
local desired = obj.status.desiredReplicas or 0
if ready < desired then
  hs.status = "Progressing"
  hs.message = "Scaling: " .. tostring(ready) .. "/" .. tostring(desired) .. " bots ready"
  return hs
end

hs.status = "Healthy"
hs.message = tostring(ready) .. "/" .. tostring(desired) .. " bots ready, capacity "
  .. tostring(obj.status.readyCapacity or 0) .. " calls, demand " .. tostring(obj.status.demand or 0)
return hs
