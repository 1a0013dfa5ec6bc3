"""Telemetry: OpenTelemetry traces across API → workflow → activity, and HTTP request metrics."""

from __future__ import annotations

import time

from opentelemetry import propagate, trace
from prometheus_client import Counter, Histogram
from temporalio.contrib.opentelemetry import TracingInterceptor

tracer = trace.get_tracer("fulqrun-hub")

HTTP_REQUESTS = Counter("hub_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram("hub_http_request_seconds", "HTTP request latency", ["method", "route"])


def temporal_interceptor() -> TracingInterceptor:
    """Temporal interceptor that carries the current trace into workflows and activities."""
    return TracingInterceptor(tracer)


class RequestTelemetry:
    """ASGI middleware: one server span per request (W3C trace context honoured) and Prometheus metrics."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        status = {"code": 500}

        async def send_wrapper(message) -> None:  # noqa: ANN001
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        started = time.perf_counter()
        name = f"{scope['method']} {scope['path']}"
        with tracer.start_as_current_span(name, context=propagate.extract(headers), kind=trace.SpanKind.SERVER):
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                route = scope.get("route")
                label = getattr(route, "path", "unmatched")
                HTTP_REQUESTS.labels(scope["method"], label, str(status["code"])).inc()
                HTTP_LATENCY.labels(scope["method"], label).observe(time.perf_counter() - started)
