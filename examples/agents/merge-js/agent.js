// Example agent in JavaScript: merges the outputs of a parallel block into one report
// (`{"parts": {...}}` in, `{"parts": N, "report": "..."}` out).
import { agent, Error } from 'braid-sdk';

export const run = agent((ctx, input) => {
  const parts = input?.parts;
  if (parts === null || typeof parts !== 'object' || Array.isArray(parts)) {
    throw Error.fatal("the input needs an object field 'parts'");
  }
  const names = Object.keys(parts).sort();
  return { parts: names.length, report: names.map((name) => `${name}: ${JSON.stringify(parts[name])}`).join('\n') };
});
