// A JavaScript test agent that misbehaves on request (`{"action": ...}`), to prove each
// outcome of a JavaScript agent: ok, error, retryable, throw, throw_string, loop, alloc, log.
import { agent, Error, config, log } from 'braid-sdk';

export const run = agent((ctx, input) => {
  switch (input.action ?? 'ok') {
    case 'ok':
      return { stepId: ctx.stepId, attempt: ctx.attempt, config: config(input.config_key ?? 'key') ?? null, input };
    case 'error':
      throw Error.fatal(input.message ?? 'asked to fail');
    case 'retryable':
      throw Error.retryable(input.message ?? 'try again');
    case 'throw':
      return { value: undefined.field };
    case 'throw_string':
      throw 'a bare string';
    case 'loop':
      for (;;) {}
    case 'alloc': {
      const hoard = [];
      for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
    }
    case 'log':
      for (let i = 0; i < (input.lines ?? 3); i++) log.info(`log line ${i}`);
      console.log('printed to stdout');
      return { logged: true };
    default:
      throw Error.fatal(`unknown action ${JSON.stringify(input.action)}`);
  }
});
