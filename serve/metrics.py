"""What `demi serve` counts: usage per key, and the `/metrics` a Prometheus server scrapes.

Each server has its own `prometheus_client.CollectorRegistry` (never the process-wide default), so
several servers in one process (tests, an embedding program) keep their own numbers. Families:

- `demi_http_requests_total` (counter; `route`: the route's path template, `other` for unknown URLs,
  `method`, `status`, `key`), `demi_http_request_duration_seconds` (histogram; `route`, `method`: to the
  last byte, a stream's end), `demi_http_requests_in_progress` (gauge);
- `demi_time_to_first_token_seconds` (histogram; `route`): arrival to a generation's first text piece;
- `demi_generation_requests_total`, `demi_generation_errors_total`, `demi_prompt_tokens_total`,
  `demi_completion_tokens_total` (counters; `key`);
- from the model runner's `stats()` at scrape time: `demi_queue_depth` (runs waiting for a slot),
  `demi_live_runs` (runs holding one), `demi_max_live_runs`, `demi_max_queue`, `demi_engine_capacity`
  (gauges), `demi_runs_submitted_total`, `demi_runs_finished_total` (`outcome`: completed, cancelled,
  dropped, error);
- `demi_keys_loaded` (gauge), `demi_keys_file_reloads_total` (`result`: ok, error).

The `key` label is the key's *name* from the keys file (`default` for `--api-key`), `local` when the
server has no keys (loopback only), and `-` for a request without a valid key. Usage per key counts
generation requests (POST /v1/completions and /v1/chat/completions): `requests`, `prompt_tokens`,
`completion_tokens`, and `errors` (answered 4xx or 5xx other than a client that left, or a stream
that ended on an error event), in memory since the server started.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from demi.serve.keys import KeyRing

GENERATION_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions"})
METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "other"
LOCAL, UNAUTHENTICATED = "local", "-"
CLIENT_GONE = 499
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass
class KeyUsage:
    """One key's generation usage since the server started."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    last_request: float | None = None  # Unix time
    role: str = "user"  # the key's role when it last made a request


@dataclass(frozen=True)
class Outcome:
    """A finished request, as the guard saw it."""

    route: str
    method: str
    status: int
    key: str
    seconds: float
    role: str = "user"
    usage: tuple[int, int] | None = None  # prompt and completion tokens of a generation
    first_token_s: float | None = None
    failed: bool = False  # a stream that ended on an error event


class Metrics:
    """Counters, histograms and the usage book of one server."""

    def __init__(self, runner_stats: Callable[[], dict[str, Any]], keyring: KeyRing):
        self.runner_stats, self.keyring = runner_stats, keyring
        self.started = time.time()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "demi_http_requests",
            "HTTP requests answered, by route template, method, status code and key name",
            ["route", "method", "status", "key"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "demi_http_request_duration_seconds",
            "Time from a request's arrival to the last byte of its answer (a stream's end)",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "demi_http_requests_in_progress", "HTTP requests being answered", registry=self.registry
        )
        self.ttft = Histogram(
            "demi_time_to_first_token_seconds",
            "Time from a generation request's arrival to its first text piece",
            ["route"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self._usage: dict[str, KeyUsage] = {}
        self._lock = threading.Lock()
        self.registry.register(_Collector(self))

    @staticmethod
    def method_label(method: str) -> str:
        return method if method in METHODS else "other"

    def record(self, out: Outcome) -> None:
        method = self.method_label(out.method)
        self.requests.labels(out.route, method, str(out.status), out.key).inc()
        self.latency.labels(out.route, method).observe(out.seconds)
        if out.first_token_s is not None:
            self.ttft.labels(out.route).observe(out.first_token_s)
        if out.route not in GENERATION_ROUTES or out.method != "POST" or out.key == UNAUTHENTICATED:
            return
        with self._lock:
            book = self._usage.setdefault(out.key, KeyUsage())
            book.requests += 1
            book.role = out.role
            book.last_request = time.time()
            if out.usage is not None:
                book.prompt_tokens += out.usage[0]
                book.completion_tokens += out.usage[1]
            if out.failed or (out.status >= 400 and out.status != CLIENT_GONE):
                book.errors += 1

    def usage(self) -> dict[str, KeyUsage]:
        with self._lock:
            return {name: KeyUsage(**asdict(u)) for name, u in self._usage.items()}

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format the scraper asked for (OpenMetrics or Prometheus text)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _Collector:
    """Families read at scrape time: the runner's queue and counters, the keys, and usage per key."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        stats = self.metrics.runner_stats()
        gauges = {
            "demi_queue_depth": ("queued", "Generation runs waiting for a slot on the model runner"),
            "demi_live_runs": ("active", "Generation runs holding a slot on the model runner"),
            "demi_max_live_runs": ("max_active", "Most runs the model runner keeps live at once"),
            "demi_max_queue": ("max_queue", "Most runs that may wait for a slot"),
            "demi_engine_capacity": ("engine_capacity", "KV slots the engine has"),
        }
        for name, (field, text) in gauges.items():
            yield GaugeMetricFamily(name, text, value=float(stats.get(field, 0) or 0))
        yield CounterMetricFamily(
            "demi_runs_submitted", "Runs submitted to the model runner", value=float(stats.get("submitted", 0) or 0)
        )
        finished = CounterMetricFamily(
            "demi_runs_finished", "Runs the model runner finished, by outcome", labels=["outcome"]
        )
        for outcome, field in (("completed", "completed"), ("cancelled", "cancelled"), ("dropped", "dropped")):
            finished.add_metric([outcome], float(stats.get(field, 0) or 0))
        finished.add_metric(["error"], float(stats.get("errors", 0) or 0))
        yield finished

        ring = self.metrics.keyring
        yield GaugeMetricFamily("demi_keys_loaded", "API keys the server accepts now", value=len(ring.keys()))
        reloads = CounterMetricFamily(
            "demi_keys_file_reloads", "Re-reads of the keys file, by result", labels=["result"]
        )
        reloads.add_metric(["ok"], float(ring.reloads))
        reloads.add_metric(["error"], float(ring.reload_errors))
        yield reloads

        usage = self.metrics.usage()
        families = {
            "requests": CounterMetricFamily("demi_generation_requests", "Generation requests by key", labels=["key"]),
            "errors": CounterMetricFamily("demi_generation_errors", "Generation requests that failed", labels=["key"]),
            "prompt_tokens": CounterMetricFamily("demi_prompt_tokens", "Prompt tokens by key", labels=["key"]),
            "completion_tokens": CounterMetricFamily(
                "demi_completion_tokens", "Completion tokens generated by key", labels=["key"]
            ),
        }
        for name, book in sorted(usage.items()):
            for field, family in families.items():
                family.add_metric([name], float(getattr(book, field)))
        yield from families.values()
