/** Where this call sits in a workflow run. */
export interface Context {
  readonly runId: string;
  readonly stepId: string;
  readonly branch: string | undefined;
  readonly itemIndex: number | undefined;
  /** Counts from 1. */
  readonly attempt: number;
}

/** A step error: `Error.fatal(message)` or `Error.retryable(message)`. */
export declare class Error extends globalThis.Error {
  constructor(message: string, retryable?: boolean);
  readonly retryable: boolean;
  static fatal(message: string): Error;
  static retryable(message: string): Error;
}

export declare const log: {
  trace(message: unknown): void;
  debug(message: unknown): void;
  info(message: unknown): void;
  warn(message: unknown): void;
  error(message: unknown): void;
};

/** A configuration value (or secret) the workflow grants this step. */
export declare function config(key: string): string | undefined;
/** The same for every attempt of this step execution. */
export declare function idempotencyKey(): string;

/** Makes `fn(ctx, input) -> output` the agent's `run` export (JSON in and out). */
export declare function agent<I = any, O = any>(fn: (ctx: Context, input: I) => O): (ctx: unknown, input: string) => string;
