"""HTTP routers, one module per resource, collected here for ``api.create_app``."""

from fastapi import APIRouter

from routes import orgs

ROUTERS: list[APIRouter] = [orgs.router]
