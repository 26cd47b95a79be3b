// Example agent in JavaScript: counts the words, lines and characters of a text (the same
// answer as the Rust `word-count`).
import { agent, Error, log } from 'braid-sdk';

export const run = agent((ctx, input) => {
  if (typeof input?.text !== 'string') {
    throw Error.fatal("the input needs a string field 'text'");
  }
  const text = input.text;
  log.info(`counting ${text.length} characters`);
  const lines = text === '' ? 0 : text.replace(/\n$/, '').split('\n').length;
  return { words: text.split(/\s+/).filter(Boolean).length, lines, chars: [...text].length };
});
