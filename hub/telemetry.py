"""Telemetry: OpenTelemetry traces across API → workflow → activity, and HTTP request metrics."""

from __future__ import annotations

import time
from contextlib import nullcontext
from functools import lru_cache

from opentelemetry import propagate, trace
from prometheus_client import Counter, Histogram
from temporalio.contrib.opentelemetry import TracingInterceptor

tracer = trace.get_tracer("fulqrun-hub")

HTTP_REQUESTS = Counter("hub_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram("hub_http_request_seconds", "HTTP request latency", ["method", "route"])


def temporal_interceptor() -> TracingInterceptor:
    """Temporal interceptor that carries the current trace into workflows and activities."""
    return TracingInterceptor(tracer)


@lru_cache(maxsize=1024)
def _series(method: str, route: str, status: int) -> tuple:
    """The request counter and latency histogram of one method, route template and status."""
    return HTTP_REQUESTS.labels(method, route, str(status)), HTTP_LATENCY.labels(method, route)


class RequestTelemetry:
    """ASGI middleware: one server span per request (W3C trace context honoured) and Prometheus metrics."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app = app
        self.trace_headers = frozenset(name.encode() for name in propagate.get_global_textmap().fields)

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in self.trace_headers}
        status = 500

        async def send_wrapper(message) -> None:  # noqa: ANN001
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        if carrier or not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            name, context = f"{scope['method']} {scope['path']}", propagate.extract(carrier)
            span = tracer.start_as_current_span(name, context=context, kind=trace.SpanKind.SERVER)
        else:  # no tracing configured and no trace to continue: a span would record and carry nothing
            span = nullcontext()
        with span:
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                label = getattr(scope.get("route"), "path", "unmatched")
                requests, latency = _series(scope["method"], label, status)
                requests.inc()
                latency.observe(time.perf_counter() - started)
