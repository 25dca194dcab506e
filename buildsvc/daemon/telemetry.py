"""OpenTelemetry set-up: spans for solves and vertices, exported over OTLP when asked to.

The solver makes its spans through the global tracer provider. With the SDK's provider installed,
every solve gets a real trace id, which the solver records in the envelope of each of the build's
events, so ``buildsvc history trace REF`` can show the spans from the log alone, years later, and a
collector (``OTEL_EXPORTER_OTLP_ENDPOINT``, the standard variable) can receive them live.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

__all__ = ["configure_tracing"]


def configure_tracing(service_name: str = "buildsvc") -> TracerProvider:
    """Install the SDK tracer provider once per process (later calls return the same one)."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider
