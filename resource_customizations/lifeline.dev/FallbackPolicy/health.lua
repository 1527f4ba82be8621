-- Argo CD health check for lifeline.dev/v1alpha1 FallbackPolicy.
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

-- Ready: the routing is rendered and published to the ConfigMap.
local ready = condition("Ready")
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Waiting for the routing to be published"
  return hs
end
if ready.status ~= "True" then
  hs.status = "Degraded"
  hs.message = "Routing not published: " .. describe(ready)
  return hs
end

-- Degraded: a region is Failed, Draining or Recovering, or a reference is missing.
local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end

-- CapacitySufficient: healthy capacity covers expectedConcurrentCalls.
local capacity = condition("CapacitySufficient")
if capacity ~= nil and capacity.status == "False" then
  hs.status = "Degraded"
  hs.message = "Capacity short: " .. describe(capacity)
  return hs
end

hs.status = "Healthy"
local active = obj.status.activeRegions
if active ~= nil and active ~= "" then
  hs.message = "Routing published; active regions: " .. active
else
  hs.message = "Routing published"
end
return hs
