"""What the chat counts, for Prometheus (`/metrics`, chat/health.py) and, on Lambda, for
CloudWatch (one line in the embedded metric format at the end of each invocation).

The metrics live in prometheus_client's default registry, one per process. Call sites elsewhere
in chat/ are one line each (an increment, a decorator, a `with`), so this module imports nothing
from chat and every layer may import it.

Several uvicorn workers share one port, so a scrape reaches one of them at random: with
`PROMETHEUS_MULTIPROC_DIR` set (an empty directory, emptied before the server starts) every worker
writes its figures there and `/metrics` answers the sum of all of them (prometheus_client's
multiprocess mode). Without it, the figures are those of the process that answered.

Lambda is never scraped, and runs one invocation at a time per container: `emitting()` takes the
difference of every counter and histogram across the invocation and prints it as one JSON line,
which CloudWatch Logs turns into metrics without an agent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

from chat.conf import settings

# Transports, as labels.
WEBSOCKET = "websocket"
LONG_POLL = "long-poll"
# A room hub's read for every socket of its process (chat/hub.py), counted once.
HUB = "hub"

# Gauges are summed over the live workers in multiprocess mode (ignored otherwise).
OPEN_CONNECTIONS = Gauge(
    "chat_open_connections",
    "Connections open now: WebSockets (Channels) and long-poll requests in flight.",
    ["transport"],
    multiprocess_mode="livesum",
)
LONG_POLL_WAITERS = Gauge(
    "chat_long_poll_waiters",
    "Long-polls parked until their stream's next event or their timeout.",
    multiprocess_mode="livesum",
)
DELIVERIES = Counter(
    "chat_deliveries",
    "Live events written to WebSocket clients as the hub handed them on (not replies or fills).",
)
GAP_FILLS = Counter(
    "chat_gap_fills",
    "Reads from the database because live events were lost or came too far ahead.",
    ["transport"],
)
RESYNCS = Counter(
    "chat_resyncs",
    "Catch-ups answered with a resync: the cursor was too far behind to replay.",
)
# Buckets from a fraction of a millisecond (a Redis PUBLISH) to seconds (a Lambda fan-out).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FANOUT_SECONDS = Histogram(
    "chat_fanout_seconds",
    "Time to hand one room event to every fan-out backend (chat.fanout.publish).",
    buckets=_BUCKETS,
)
WRITE_SECONDS = Histogram(
    "chat_write_seconds",
    "Time of chat.writepath.post_message, refusals included.",
    buckets=_BUCKETS,
)
APIGW_POSTS = Counter(
    "chat_apigw_posts",
    "@connections posts by result (ok, gone, failed, deferred: the deadline came first); "
    "throttled counts attempts API Gateway refused with LimitExceeded, each retried.",
    ["result"],
)
RATE_LIMITED = Counter(
    "chat_rate_limited",
    "Refusals for going too fast: frames (a connection's frame rate) or room (messages a minute).",
    ["where"],
)

# Everything EMF reports: the counters and histograms (gauges say nothing once an invocation ends).
EMITTED: tuple[MetricWrapperBase, ...] = (
    DELIVERIES,
    GAP_FILLS,
    RESYNCS,
    FANOUT_SECONDS,
    WRITE_SECONDS,
    APIGW_POSTS,
    RATE_LIMITED,
)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def tracking(gauge: Gauge) -> Callable[[F], F]:
    """A coroutine function counted in `gauge` while it runs (prometheus_client's own
    `track_inprogress()` decorator would let go as soon as the coroutine is created)."""

    def decorator(func: F) -> F:
        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            with gauge.track_inprogress():
                return await func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def apigw_attempt(code: str) -> None:
    """One @connections attempt's error code: a throttled one is counted (and retried)."""
    if code == "LimitExceededException":
        APIGW_POSTS.labels("throttled").inc()


def counted_result(counter: Counter) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Counts each call under the label it returns (chat.apigateway.post's result)."""

    def decorator(func: Callable[..., str]) -> Callable[..., str]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> str:
            result = func(*args, **kwargs)
            counter.labels(result).inc()
            return result

        return wrapper

    return decorator


# --- exposition ---


def exposition() -> tuple[bytes, str]:
    """The text format and its content type; the sum over every worker in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# --- CloudWatch embedded metric format ---


def _name(sample: str, labels: dict[str, str]) -> str:
    """`chat_apigw_posts_total{result="ok"}` -> `apigw_posts_ok`: EMF values are flat keys."""
    base = sample.removeprefix("chat_").removesuffix("_total")
    return "_".join([base, *(labels[key].replace("-", "_") for key in sorted(labels))])


def snapshot() -> dict[str, float]:
    """Every counter's and histogram's (count and sum) current value, by EMF name."""
    values: dict[str, float] = {}
    for metric in EMITTED:
        for family in metric.collect():
            for sample in family.samples:
                if sample.name.endswith(("_total", "_count", "_sum")):
                    values[_name(sample.name, sample.labels)] = sample.value
    return values


def emf_line(before: dict[str, float], after: dict[str, float], handler: str) -> str:
    """One EMF document: what moved between the two snapshots, under the Function dimension."""
    deltas = {
        name: round(value - before.get(name, 0.0), 6)
        for name, value in after.items()
        if value != before.get(name, 0.0)
    }
    document: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": "Chat",
                    "Dimensions": [["Function"]],
                    "Metrics": [
                        {"Name": name, "Unit": "Seconds" if name.endswith("_sum") else "Count"}
                        for name in deltas
                    ],
                }
            ],
        },
        "Function": os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or "chat",
        # A property, not a dimension: searchable in Logs Insights, no extra metric cost.
        "Handler": handler,
        **deltas,
    }
    return json.dumps(document, separators=(",", ":"))


_emitting: ContextVar[bool] = ContextVar("chat_metrics_emitting", default=False)


@contextlib.contextmanager
def emitting(handler: str) -> Iterator[None]:
    """Around one Lambda invocation: print its EMF line at the end, on stdout (which Lambda sends
    to CloudWatch Logs as it is; the logging formatters would wrap it). Only with
    CHAT_METRICS_EMF, and once for nested entry points."""
    if not settings.CHAT_METRICS_EMF or _emitting.get():
        yield
        return
    token = _emitting.set(True)
    before = snapshot()
    try:
        yield
    finally:
        _emitting.reset(token)
        sys.stdout.write(emf_line(before, snapshot(), handler) + "\n")
        sys.stdout.flush()
