"""Write Braid agents in Python.

An agent is one step of a Braid workflow: a WebAssembly component implementing the
``braid:agent`` world (``guest-sdk/wit/agent.wit``), built with componentize-py. This package
turns a plain function over JSON values into that component::

    from braid_sdk import agent, Context, Error, log, config

    @agent
    def run(ctx: Context, input: dict) -> dict:
        log.info(f"step {ctx.step_id}, attempt {ctx.attempt}")
        if "text" not in input:
            raise Error.fatal("the input has no 'text'")
        return {"words": len(input["text"].split())}

Semantics, the same as the Rust and JavaScript SDKs:

* the input arrives parsed from JSON; malformed input is a non-retryable error that says so;
* the return value is serialised to JSON (a value that cannot be is a non-retryable error);
* ``raise Error.fatal(msg)`` / ``raise Error.retryable(msg)`` end the step as ``guest_error``,
  retried by the workflow's policy only when retryable;
* any other exception is a non-retryable ``guest_error`` whose message holds the traceback (a
  deterministic bug is not worth retrying).

Imports must sit at module top level: the component is a pre-initialised snapshot of the
module, and there is no file system to import from at run time.
"""

import json
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

import componentize_py_types
import wit_world
from wit_world.imports import host
from wit_world.imports.types import StepError

from . import log

__all__ = ["agent", "Context", "Error", "log", "config", "idempotency_key"]


@dataclass(frozen=True)
class Context:
    """Where this call sits in a workflow run."""

    run_id: str
    step_id: str
    branch: Optional[str]
    item_index: Optional[int]
    #: Counts from 1.
    attempt: int


class Error(Exception):
    """A step error: ``Error.fatal(...)`` or ``Error.retryable(...)``."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.message = str(message)
        self.retryable = bool(retryable)

    @classmethod
    def fatal(cls, message: str) -> "Error":
        """An error no retry can help: bad input, a rule broken."""
        return cls(message, retryable=False)

    @classmethod
    def retryable(cls, message: str) -> "Error":
        """An error the same input might not meet again: a service down, a rate limit."""
        return cls(message, retryable=True)


def config(key: str) -> Optional[str]:
    """A configuration value (or secret) the workflow grants this step, or None."""
    return host.config(key)


def idempotency_key() -> str:
    """The same for every attempt of this step execution; different for any other."""
    return host.idempotency_key()


def _fail(message: str, retryable: bool = False):
    return componentize_py_types.Err(StepError(message=message, retryable=retryable))


def agent(function: Callable[[Context, Any], Any]) -> Callable[[Context, Any], Any]:
    """Makes ``function(ctx, input) -> output`` the agent of its module."""
    module = sys.modules[function.__module__]

    class WitWorld(wit_world.WitWorld):
        def run(self, ctx, input: str) -> str:
            try:
                value = json.loads(input)
            except ValueError as err:
                raise _fail(f"malformed input: {err}")
            context = Context(ctx.run_id, ctx.step_id, ctx.branch, ctx.item_index, ctx.attempt)
            try:
                output = function(context, value)
            except Error as err:
                raise _fail(err.message, err.retryable)
            except Exception:
                raise _fail("uncaught exception:\n" + traceback.format_exc().rstrip())
            try:
                # Compact, as Rust and JavaScript agents answer: the host passes the text on
                # and stores it as it is.
                return json.dumps(output, separators=(",", ":"))
            except (TypeError, ValueError) as err:
                raise _fail(f"the output is not JSON: {err}")

    # componentize-py looks for `WitWorld` in the application module.
    module.WitWorld = WitWorld
    return function
