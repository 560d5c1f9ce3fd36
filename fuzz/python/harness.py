"""What every Python fuzz target shares: limits, the allowed exceptions and
the verdict on everything else.

A target module defines ``one_input(data: bytes)`` (runs one input) and
``ALLOWED`` (the exception types an input may end with), optionally
``HIDDEN`` and ``TIME_LIMIT``, and calls ``harness.run(one_input, ALLOWED)``
from its ``__main__``. Anything ``one_input`` raises that is not in
``ALLOWED`` is a crash, and so is an allowed exception caused by one in
``HIDDEN`` (default MemoryError, RecursionError, KeyError: a reader that
wraps every failure hides an over-allocation that way), and an input that
takes longer than ``TIME_LIMIT`` seconds twice in a row. An input still
running after ``HANG_LIMIT`` seconds is stopped (SIGALRM) and reported as a
hang. The process runs under an address-space limit (``MEMORY_LIMIT``,
``FUZZ_MEMORY_MB``, default 2048), so an allocation the input does not
justify shows as a MemoryError.

By default the first crash stops the run, as libFuzzer does (atheris
writes the input to ``-artifact_prefix``). With ``FUZZ_KEEP_GOING=1`` each
distinct crash (exception type and the innermost ferroformer frame, or the
finding's own key) is printed as one ``CRASH`` line, its input saved under
``FUZZ_ARTIFACTS`` once, and the run goes on: that is how a long run lists
everything it finds. ``replay.py`` runs saved inputs through the same
verdict without fuzzing.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import sys
import time
import traceback

TIME_LIMIT = float(os.environ.get("FUZZ_TIME_LIMIT", "1.0"))  # seconds per input
HANG_LIMIT = float(os.environ.get("FUZZ_HANG_LIMIT", "20"))  # seconds before an input is stopped
#: bytes of address space for the whole process
MEMORY_LIMIT = int(os.environ.get("FUZZ_MEMORY_MB", "2048")) << 20
HUGE = os.environ.get("FERROFORMER_FUZZ_HUGE", "1") != "0"
KEEP_GOING = os.environ.get("FUZZ_KEEP_GOING", "0") == "1"
ARTIFACTS = os.environ.get("FUZZ_ARTIFACTS", "")
HIDDEN = (MemoryError, RecursionError, KeyError)
#: What the current input is doing (an op name, a reader), set by the target;
#: it prefixes every crash key.
label = ""


class Finding(Exception):
    """A broken contract the harness itself detects (a wrong result, a slow input);
    ``key`` says which, for de-duplication."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class Hang(BaseException):
    """Raised by SIGALRM in an input that ran past ``HANG_LIMIT`` (a BaseException, so
    that no ``except Exception`` in the code under test swallows it)."""


_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _site(exc: BaseException) -> str:
    """Where an exception came from: its innermost frame inside ferroformer,
    else its innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/ferroformer/" in f.filename and "/fuzz/" not in f.filename]
    f = (ours or frames or [None])[-1]
    if f is None:
        return "?"
    name = (
        os.path.relpath(f.filename, _ROOT) if _ROOT in f.filename else os.path.basename(f.filename)
    )
    return f"{name}:{f.lineno}"


def signature(exc: BaseException) -> str:
    if isinstance(exc, Finding):
        return f"{label}:{exc.key}"
    return f"{label}:{type(exc).__name__}@{_site(exc)}"


def _hidden_cause(exc: BaseException, hidden):
    seen = set()
    e = exc.__cause__ or exc.__context__
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, hidden):
            return e
        e = e.__cause__ or e.__context__
    return None


_seen: dict = {}


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]


def _report(data: bytes, exc: BaseException) -> None:
    key = signature(exc)
    if key in _seen:
        _seen[key] += 1
        return
    _seen[key] = 1
    first = first_line(exc)
    print(f"CRASH {key} | {type(exc).__name__}: {first} | input {len(data)} bytes", flush=True)
    if ARTIFACTS:
        os.makedirs(ARTIFACTS, exist_ok=True)
        name = hashlib.sha1(key.encode()).hexdigest()[:12]
        with open(os.path.join(ARTIFACTS, f"crash-{name}"), "wb") as f:
            f.write(data)
        with open(os.path.join(ARTIFACTS, "crashes.txt"), "a") as f:
            f.write(f"crash-{name}\t{key}\t{type(exc).__name__}: {first}\n")


def _on_alarm(signum, frame):
    raise Hang(f"still running after {HANG_LIMIT:g} s")


def _timed(one_input, data, allowed, hidden):
    """Runs one input under the hang alarm; the seconds it took."""
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, HANG_LIMIT)
    try:
        one_input(data)
    except Hang as e:
        raise Finding("hang", str(e)) from e
    except allowed as e:
        cause = _hidden_cause(e, hidden)
        if cause is not None:
            raise Finding(
                f"hidden-{type(cause).__name__}@{_site(e)}",
                f"{type(e).__name__} wrapping {type(cause).__name__}: {e}",
            ) from e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return time.perf_counter() - start


def check(one_input, data: bytes, allowed, *, hidden=HIDDEN, time_limit=None) -> None:
    """Runs one input and raises (a crash) unless it ended well."""
    limit = TIME_LIMIT if time_limit is None else time_limit
    elapsed = _timed(one_input, data, allowed, hidden)
    if elapsed > limit:
        # the machine is shared: only an input that is slow twice counts
        again = _timed(one_input, data, allowed, hidden)
        if again > limit:
            raise Finding("slow", f"{min(elapsed, again):.2f} s for one input (limit {limit} s)")


#: Share of MEMORY_LIMIT at which a keep-going process starts afresh: libFuzzer's
#: corpus and atheris' comparison tables grow with the executions (about 1.8 GB
#: after 500k inputs of py-ops), until ordinary allocations fail under the
#: address-space limit.
RESTART_FRACTION = 0.6
#: The exit status that tells run.sh to start the target again.
RESTART_STATUS = 75


def _rss() -> int:
    """This process's resident bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _restart() -> None:
    print(
        f"== restart: the fuzzing process holds {_rss() >> 20} MB (its own growth); "
        f"starting afresh",
        flush=True,
    )
    os._exit(RESTART_STATUS)


def set_limits() -> None:
    """The address-space limit, a deep recursion limit and the hang alarm's handler."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = MEMORY_LIMIT if hard == resource.RLIM_INFINITY else min(MEMORY_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    sys.setrecursionlimit(10_000)
    signal.signal(signal.SIGALRM, _on_alarm)


def run(one_input, allowed, *, hidden=HIDDEN, time_limit=None) -> None:
    """Sets the limits and hands ``one_input`` to atheris (libFuzzer's arguments in sys.argv)."""
    import atheris

    set_limits()

    calls = [0]

    def test_one(data: bytes) -> None:
        calls[0] += 1
        if calls[0] % 1024 == 0 and _rss() > RESTART_FRACTION * MEMORY_LIMIT:
            _restart()
        if not KEEP_GOING:
            check(one_input, data, allowed, hidden=hidden, time_limit=time_limit)
            return
        try:
            check(one_input, data, allowed, hidden=hidden, time_limit=time_limit)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            memory = isinstance(e, MemoryError) or _hidden_cause(e, MemoryError) is not None
            if memory and _rss() > RESTART_FRACTION * MEMORY_LIMIT / 2:
                _restart()  # the fuzzing process's own growth, not this input's
            _report(data, e)

    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
