-- Argo CD health check for lifeline.dev/v1alpha1 Trunk.
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

-- A disabled trunk is parked on purpose (maintenance): neither broken nor pending.
if obj.spec ~= nil and obj.spec.disabled == true then
  hs.status = "Suspended"
  hs.message = "Trunk is disabled (maintenance): no traffic, no probes"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status and obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for lifeline to observe generation " .. tostring(generation)
  return hs
end

local healthy = condition("Healthy")
if healthy == nil or healthy.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Waiting for the first probe results"
  return hs
end

local summary = ""
if obj.status.healthySummary ~= nil then
  summary = " (" .. obj.status.healthySummary .. " endpoints healthy)"
end

-- Probing: no endpoint is up yet and some have not been judged (a new trunk).
if healthy.status ~= "True" and healthy.reason == "Probing" then
  hs.status = "Progressing"
  hs.message = describe(healthy)
  return hs
end

if healthy.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(healthy) .. summary
else
  hs.status = "Degraded"
  hs.message = describe(healthy) .. summary
end
return hs
