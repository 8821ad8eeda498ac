"""Is the Hugging Face hub usable right now? One quick answer, so that a missing local input fails in seconds with the
local-path option that replaces the hub, instead of after half a minute of retries with generic advice.

* ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` set: the hub is not used; the libraries may still find a copy in their
  own cache, so the caller tries that first and, failing it, names the variable that is set.
* otherwise one HTTP request to the hub (``$HF_ENDPOINT``, default ``huggingface.co``) with a timeout of
  :data:`PROBE_TIMEOUT` seconds; its answer is remembered for the process.
"""

from __future__ import annotations

import functools
import os
import threading
import urllib.error
import urllib.request
from urllib.parse import urlparse

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
#: seconds the connection probe waits (the whole check stays under 5 s)
PROBE_TIMEOUT = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"


def offline_variables() -> list[str]:
    """The offline switches that are set (to 1 / true / yes / on)."""
    truthy = ("1", "true", "yes", "on")
    return [name for name in OFFLINE_VARIABLES if os.environ.get(name, "").strip().lower() in truthy]


def _request(endpoint: str, timeout: float, answer: list) -> None:
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
        answer.append(None)
    except urllib.error.HTTPError:  # the hub answered (with an error status): it is reachable
        answer.append(None)
    except Exception as exc:  # DNS, refused, timeout, TLS, proxy: not usable now
        reason = getattr(exc, "reason", exc)
        answer.append(f"{urlparse(endpoint).netloc or endpoint} did not answer ({type(reason).__name__}: {reason})")


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str, timeout: float) -> str | None:
    """One HEAD request to ``endpoint`` in a daemon thread, waited for at most ``timeout`` seconds in all (name
    resolution included, which a socket timeout does not bound)."""
    if not urlparse(endpoint).hostname:
        return f"HF_ENDPOINT {endpoint!r} names no host"
    answer: list = []
    thread = threading.Thread(target=_request, args=(endpoint, timeout, answer), daemon=True)
    thread.start()
    thread.join(timeout)
    if not answer:
        return f"{urlparse(endpoint).netloc} did not answer within {timeout:g} s"
    return answer[0]


def hub_problem(timeout: float = PROBE_TIMEOUT) -> str | None:
    """``None`` when the hub can be tried now, else why not, in words: the offline variables that are set, or the
    endpoint that did not accept a connection within ``timeout`` seconds."""
    switched = offline_variables()
    if switched:
        return f"{' and '.join(switched)} {'is' if len(switched) == 1 else 'are'} set"
    return _probe(os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/"), timeout)


def hub_advice(problem: str) -> str:
    """The way back to the hub that fits ``problem`` (never advice about a variable that is not set)."""
    switched = offline_variables()
    if switched:
        return f"or unset {' and '.join(switched)} on a machine that reaches the hub"
    return "or run where the hub is reachable (a copy already in the Hugging Face cache is used with HF_HUB_OFFLINE=1)"
