"""HTTP routers, one module per resource, collected here for ``api.create_app``."""

from fastapi import APIRouter

from routes import (
    ai_models,
    api_keys,
    audit,
    connections,
    forecasts,
    leads,
    opportunities,
    orgs,
    resources,
    rule_runs,
    rule_versions,
    syncs,
    webhook_events,
)
from webhooks import router as webhooks_router

ROUTERS: list[APIRouter] = [orgs.router, opportunities.router, webhook_events.router, webhooks_router.router,
                            resources.router, connections.router, connections.oauth_router, syncs.router,
                            leads.router, ai_models.router, ai_models.retraining, api_keys.router, forecasts.router,
                            rule_runs.router, rule_versions.router, audit.router]
