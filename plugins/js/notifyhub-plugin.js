// Helpers for notifyhub plugins written in JavaScript (componentize-js).
//
// `request(method, url, headers, body)` sends a blocking HTTP request and
// reads its answer in one call to the host (`notifyhub:http/client`, bodies
// up to 512 KiB; the host enforces the plugin's allowlist, timeouts and
// size caps), and returns { status, headers, body, text(), json() }.
// `retryable`, `rateLimited`, `permanent` and `invalid` throw the four
// delivery error classes; `classify(response)` throws the usual class for
// an unsuccessful status. `console.log` works too: the host logs each line
// with the plugin and task.

import { getConfig, log as hostLog } from 'notifyhub:plugin/host@0.1.0';
import { send } from 'notifyhub:http/client@0.1.0';

const MAX_RESPONSE_BYTES = 1 << 20;
export const DEFAULT_RETRY_AFTER_MS = 1000;

export const config = (key) => getConfig(key);
export const log = (level, message) => hostLog(level, message);

// A thrown { tag, val } becomes the `err` case of send's result.
export function retryable(message, retryAfterMs) {
  throw { tag: 'retryable', val: { message, retryAfterMs } };
}
export function rateLimited(message, retryAfterMs = DEFAULT_RETRY_AFTER_MS) {
  throw { tag: 'rate-limited', val: { message, retryAfterMs: BigInt(retryAfterMs) } };
}
export function permanent(message) {
  throw { tag: 'permanent', val: message };
}
export function invalid(message) {
  throw { tag: 'invalid', val: message };
}

// Refuses what is not an absolute http(s) URL, before the host sees it.
function checkUrl(url) {
  if (!/^https?:\/\/[^/?]+/.test(url)) invalid('the target must be an http:// or https:// URL');
}

const redacted = (url) => url.replace(/^(https?:\/\/[^/?]+).*$/, '$1');

function transport(code, url) {
  if (code && code.tag === 'HTTP-request-denied') {
    permanent(`the host denied the request to ${redacted(url)}: add it to the plugin's allowed_hosts`);
  }
  retryable(`request to ${redacted(url)} failed: ${code && code.tag}`);
}

export function request(method, url, headers, body = new Uint8Array()) {
  checkUrl(url);
  const encoder = new TextEncoder();
  let answer;
  try {
    answer = send({
      method: { tag: method.toLowerCase() },
      url,
      headers: headers.map(([k, v]) => [k.toLowerCase(), encoder.encode(v)]),
      body,
    });
  } catch (e) {
    const error = e.payload ?? e;
    if (error && error.tag === 'invalid') {
      invalid(`the request to ${redacted(url)} cannot be sent: ${error.val}`);
    }
    transport(error && error.val, url);
  }
  const decoder = new TextDecoder();
  const responseHeaders = {};
  for (const [k, v] of answer.headers) responseHeaders[k] = decoder.decode(v);
  return response(answer.status, responseHeaders, answer.body.subarray(0, MAX_RESPONSE_BYTES));
}

// What `request` returns.
function response(status, responseHeaders, bytes) {
  const text = () => new TextDecoder().decode(bytes);
  return {
    status,
    headers: responseHeaders,
    body: bytes,
    text,
    json() {
      try {
        return JSON.parse(text());
      } catch (_) {
        return null;
      }
    },
    retryAfterMs() {
      const value = parseFloat(responseHeaders['retry-after']);
      return Number.isFinite(value) ? Math.ceil(value * 1000) : undefined;
    },
  };
}

// The usual meaning of an unsuccessful status: 429 rate limited;
// 408/425/5xx retryable; 401/403/404/410 permanent; other 4xx invalid.
export function classify(response) {
  const { status } = response;
  if (status >= 200 && status < 300) return;
  const detail = `HTTP ${status}: ${response.text().slice(0, 300).trim()}`;
  const retryAfter = response.retryAfterMs();
  if (status === 429) rateLimited(detail, retryAfter ?? DEFAULT_RETRY_AFTER_MS);
  if (status === 408 || status === 425 || status >= 500) {
    retryable(detail, retryAfter === undefined ? undefined : BigInt(retryAfter));
  }
  if ([401, 403, 404, 410].includes(status)) permanent(detail);
  invalid(detail);
}
