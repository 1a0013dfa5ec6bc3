"""Traces flow from an HTTP request into Temporal; request metrics reach /metrics."""

from __future__ import annotations

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTER = InMemorySpanExporter()


def setup_module() -> None:
    """OpenTelemetry allows one global tracer provider per process: install the in-memory one once."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


async def test_requests_are_counted_and_traced(api: httpx.AsyncClient) -> None:
    exporter = EXPORTER
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert (await api.get("/healthz", headers={"traceparent": traceparent})).status_code == 200
    metrics = (await api.get("/metrics")).text
    assert 'hub_http_requests_total{method="GET",route="/healthz",status="200"}' in metrics
    spans = [s for s in exporter.get_finished_spans() if s.name == "GET /healthz"]
    assert spans and format(spans[0].context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
