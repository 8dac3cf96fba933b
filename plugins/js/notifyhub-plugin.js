// Helpers for notifyhub plugins written in JavaScript (componentize-js).
//
// `request(method, url, headers, body)` sends a blocking HTTP request and
// returns { status, headers, body, text(), json() }. A body of up to 512
// KiB goes to the host with the request, and the answer comes back, in one
// call (`notifyhub:http/client`); a larger one is streamed through
// `wasi:http`. Either way the host enforces the plugin's allowlist,
// timeouts and size caps.
// `retryable`, `rateLimited`, `permanent` and `invalid` throw the four
// delivery error classes; `classify(response)` throws the usual class for
// an unsuccessful status. `console.log` works too: the host logs each line
// with the plugin and task.

import { handle } from 'wasi:http/outgoing-handler@0.2.12';
import { Fields, OutgoingRequest, OutgoingBody } from 'wasi:http/types@0.2.12';
import { getConfig, log as hostLog } from 'notifyhub:plugin/host@0.1.0';
import { send } from 'notifyhub:http/client@0.1.0';

const MAX_RESPONSE_BYTES = 1 << 20;
// The largest body `notifyhub:http/client` takes in one call.
const ONE_CALL_MAX_BODY = 512 * 1024;
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
  if (body.length > ONE_CALL_MAX_BODY) return streamed(method, url, headers, body);
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

// `request` through `wasi:http`, the body written 4 KiB at a time.
function streamed(method, url, headers, body) {
  const [, scheme, authority, rest] = /^(https?):\/\/([^/?]+)(.*)$/.exec(url);
  const path = rest.startsWith('?') ? '/' + rest : rest || '/';
  const encoder = new TextEncoder();
  // A known length spares servers a chunked body.
  const all = [...headers, ['content-length', String(body.length)]];
  const outgoing = new OutgoingRequest(
    Fields.fromList(all.map(([k, v]) => [k.toLowerCase(), encoder.encode(v)])),
  );
  outgoing.setMethod({ tag: method.toLowerCase() });
  outgoing.setScheme({ tag: scheme === 'https' ? 'HTTPS' : 'HTTP' });
  outgoing.setAuthority(authority);
  outgoing.setPathWithQuery(path);
  const outgoingBody = outgoing.body();
  let future;
  try {
    future = handle(outgoing, undefined);
  } catch (e) {
    transport(e.payload ?? e, url);
  }
  try {
    const stream = outgoingBody.write();
    for (let i = 0; i < body.length; i += 4096) {
      stream.blockingWriteAndFlush(body.subarray(i, i + 4096));
    }
    stream[Symbol.dispose]?.();
    OutgoingBody.finish(outgoingBody, undefined);
  } catch (_) {
    // A denied or failed request closes the body; the response says why.
  }
  future.subscribe().block();
  const result = future.get();
  if (!result || result.tag === 'err') retryable('the HTTP response was lost');
  if (result.val.tag === 'err') transport(result.val.val, url);
  const incoming = result.val.val;
  const status = incoming.status();
  const decoder = new TextDecoder();
  const responseHeaders = {};
  for (const [k, v] of incoming.headers().entries()) responseHeaders[k.toLowerCase()] = decoder.decode(v);
  // The body outlives its stream (a stream's parent dropped first traps).
  const incomingBody = incoming.consume();
  const input = incomingBody.stream();
  const chunks = [];
  let size = 0;
  while (size < MAX_RESPONSE_BYTES) {
    let chunk;
    try {
      chunk = input.blockingRead(65536n);
    } catch (e) {
      const error = e.payload ?? e;
      if (error && error.tag === 'closed') break;
      retryable(`reading the response from ${redacted(url)} failed`);
    }
    chunks.push(chunk);
    size += chunk.length;
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return response(status, responseHeaders, bytes.subarray(0, MAX_RESPONSE_BYTES));
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
