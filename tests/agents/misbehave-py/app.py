"""A Python test agent that misbehaves on request (`{"action": ...}`), to prove each outcome
of a Python agent: ok (echoing context and config), error, retryable, raise, loop, alloc, log."""

from braid_sdk import agent, Context, Error, config, log


@agent
def run(ctx: Context, input: dict) -> dict:
    action = input.get("action", "ok")
    if action == "ok":
        return {"step_id": ctx.step_id, "attempt": ctx.attempt, "branch": ctx.branch,
                "item_index": ctx.item_index, "config": config(input.get("config_key", "key")), "input": input}
    if action == "error":
        raise Error.fatal(input.get("message", "asked to fail"))
    if action == "retryable":
        raise Error.retryable(input.get("message", "try again"))
    if action == "raise":
        return {"value": 1 / 0}
    if action == "loop":
        n = 0
        while True:
            n += 1
    if action == "alloc":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if action == "log":
        for i in range(int(input.get("lines", 3))):
            log.info(f"log line {i}")
        print("printed to stdout")
        return {"logged": True}
    if action == "not_json":
        return {"value": object()}
    raise Error.fatal(f"unknown action {action!r}")
