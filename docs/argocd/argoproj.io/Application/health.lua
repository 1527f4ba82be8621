-- Argo CD health check for argoproj.io/v1alpha1 Application, for app of apps.
-- Argo CD stopped assessing child Applications in 1.8: without this, a parent
-- moves on to its next sync wave as soon as a child Application exists, not when
-- what it deploys (the lifeline operator, its CRDs) is up.
local hs = {}
local health = obj.status and obj.status.health
if health == nil or health.status == nil or health.status == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the Application to report its health"
  return hs
end
hs.status = health.status
hs.message = health.message or ""
return hs
