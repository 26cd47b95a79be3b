// Write Braid agents in JavaScript: `export const run = agent((ctx, input) => output)`.
//
// The input arrives parsed from JSON and the return value is serialised to JSON. Throwing
// `Error.fatal(msg)` / `Error.retryable(msg)` (this module's `Error`) ends the step as
// `guest_error`, retried by the workflow's policy only when retryable; any other thrown
// `Error` is a non-retryable `guest_error` with its name, message and stack (a deterministic
// bug is not worth retrying); anything else thrown gets a readable message too. Built with
// ComponentizeJS after bundling (esbuild), against the WIT in ../wit.
import {
  log as hostLog,
  config as hostConfig,
  idempotencyKey as hostIdempotencyKey,
} from 'braid:agent/host@0.1.0';

const NativeError = globalThis.Error;

/** A step error: `Error.fatal(message)` or `Error.retryable(message)`. */
export class Error extends NativeError {
  constructor(message, retryable = false) {
    super(String(message));
    this.name = 'BraidError';
    this.retryable = Boolean(retryable);
  }

  /** An error no retry can help: bad input, a rule broken. */
  static fatal(message) {
    return new Error(message, false);
  }

  /** An error the same input might not meet again: a service down, a rate limit. */
  static retryable(message) {
    return new Error(message, true);
  }
}

/** Logging through the host: one line of the step execution's logs per call. */
export const log = Object.freeze({
  trace: (message) => hostLog('trace', String(message)),
  debug: (message) => hostLog('debug', String(message)),
  info: (message) => hostLog('info', String(message)),
  warn: (message) => hostLog('warn', String(message)),
  error: (message) => hostLog('error', String(message)),
});

/** A configuration value (or secret) the workflow grants this step, or undefined. */
export function config(key) {
  return hostConfig(String(key));
}

/** The same for every attempt of this step execution; different for any other. */
export function idempotencyKey() {
  return hostIdempotencyKey();
}

function fail(message, retryable = false) {
  // ComponentizeJS turns a thrown `{ message, retryable }` into the WIT `step-error`.
  return { message: String(message), retryable: Boolean(retryable) };
}

function describe(thrown) {
  if (thrown instanceof Error) {
    return fail(thrown.message, thrown.retryable);
  }
  if (thrown instanceof NativeError) {
    const stack = typeof thrown.stack === 'string' && thrown.stack ? `\n${thrown.stack}` : '';
    return fail(`uncaught ${thrown.name}: ${thrown.message}${stack}`);
  }
  let text;
  try {
    text = JSON.stringify(thrown);
  } catch {
    text = undefined;
  }
  return fail(`uncaught throw of a value that is not an Error: ${text ?? String(thrown)}`);
}

/** Makes `fn(ctx, input) -> output` the agent's `run` export. */
export function agent(fn) {
  return (ctx, input) => {
    let value;
    try {
      value = JSON.parse(input);
    } catch (err) {
      throw fail(`malformed input: ${err.message}`);
    }
    const context = Object.freeze({
      runId: ctx.runId,
      stepId: ctx.stepId,
      branch: ctx.branch,
      itemIndex: ctx.itemIndex,
      attempt: ctx.attempt,
    });
    let output;
    try {
      output = fn(context, value);
    } catch (thrown) {
      throw describe(thrown);
    }
    if (output !== null && typeof output === 'object' && typeof output.then === 'function') {
      throw fail('the agent returned a Promise: agents are synchronous functions');
    }
    let text;
    try {
      text = JSON.stringify(output);
    } catch (err) {
      throw fail(`the output is not JSON: ${err.message}`);
    }
    if (text === undefined) {
      throw fail(`the output is not JSON: ${typeof output}`);
    }
    return text;
  };
}
