"""Drives the official OpenTelemetry GenAI instrumentation of the `openai` client against a
small local stub that answers in the OpenAI format, exporting the spans over OTLP/HTTP
(protobuf) to sift. Used by tests/tests/otel_clients.rs.

usage: openai_client.py SIFT_BASE_URL API_KEY CALLS
Prints one JSON line: the calls made and what the stub answered.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openai import OpenAI
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"


class Stub(BaseHTTPRequestHandler):
    """Answers every chat completion as OpenAI would, with usage figures of its own."""

    def do_POST(self):  # noqa: N802 (the http.server name)
        length = int(self.headers.get("content-length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        prompt = request["messages"][-1]["content"]
        body = json.dumps(
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": 1790000000,
                "model": RESPONSE_MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "An answer to: " + prompt},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": len(prompt),
                    "completion_tokens": 7,
                    "total_tokens": len(prompt) + 7,
                },
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    base, key, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stub = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=stub.serve_forever, daemon=True).start()

    provider = TracerProvider(resource=Resource.create({"service.name": "otel-clients-test"}))
    exporter = OTLPSpanExporter(
        endpoint=base.rstrip("/") + "/v1/traces",
        headers={"Authorization": "Bearer " + key},
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    OpenAIInstrumentor().instrument(tracer_provider=provider)

    client = OpenAI(base_url=f"http://127.0.0.1:{stub.server_port}/v1", api_key="sk-stub")
    made = []
    for i in range(calls):
        prompt = f"Summarize support ticket {i} in one line"
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )
        made.append({"prompt": prompt, "input_tokens": len(prompt), "output_tokens": 7})
    provider.force_flush()
    provider.shutdown()
    stub.shutdown()
    print(json.dumps({"calls": made, "response_model": RESPONSE_MODEL}))


if __name__ == "__main__":
    main()
