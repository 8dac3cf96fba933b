// Rocket.Chat incoming webhooks, written in JavaScript.
//
// The target is the webhook URL (`https://chat.example.com/hooks/ID/TOKEN`,
// from Administration → Integrations → New → Incoming; both path parts are
// secret). The body is `{"text"}`: the title in bold on its own line, then
// the body. Rocket.Chat renders its own markdown, so markdown passes
// through and HTML loses its tags. Every `@` is followed by a word joiner
// (U+2060), so `@all`, `@here` or `@user` in a message notifies no one. The
// text is cut with a marker to 5,000 characters, Rocket.Chat's default
// Maximum Allowed Message Size.
//
// Answers: 200 `{"success": true}`. `{"success": false, "error"}` naming
// the integration or token (a deleted or disabled hook) is permanent, and
// 401/403/404 too; other 4xx invalid; 429 rate-limited until
// `X-RateLimit-Reset` (epoch ms); 5xx retryable.

import { DEFAULT_RETRY_AFTER_MS, classify, invalid, permanent, rateLimited, request } from '../notifyhub-plugin.js';

const TEXT_MAX = 5000;
const MARKER = '… [truncated]';

const defuse = (text) => text.replace(/@/g, '@\u2060');

function cut(text, max) {
  const chars = Array.from(text);
  return chars.length <= max ? text : chars.slice(0, max - Array.from(MARKER).length).join('') + MARKER;
}

function plain(message) {
  const body = message.format === 'html'
    ? message.body.replace(/<[^>]*>/g, '').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&')
    : message.body;
  return body.trim() ? body : '(empty message)';
}

export const handler = {
  describe() {
    return {
      name: 'rocketchat',
      version: '0.1.0',
      platforms: ['rocketchat'],
      configKeys: [],
      rateLimits: [],
      description: 'Rocket.Chat incoming webhooks (JavaScript plugin)',
    };
  },

  send(message) {
    if (!/^https?:\/\/[^/]+\/hooks\/[^/]+\/[^/]+/.test(message.target)) {
      invalid('the target must be a Rocket.Chat webhook URL, https://host/hooks/ID/TOKEN');
    }
    const title = message.title && message.title.trim() ? `*${message.title.trim().replace(/\s+/g, ' ')}*\n` : '';
    const text = cut(defuse(title + plain(message)), TEXT_MAX);
    const response = request(
      'POST',
      message.target,
      [['content-type', 'application/json']],
      new TextEncoder().encode(JSON.stringify({ text })),
    );
    const answer = response.json();
    if (response.status === 200 && answer && answer.success === true) {
      return { providerId: undefined, status: 'HTTP 200' };
    }
    const detail = `HTTP ${response.status}: ${(answer && answer.error) || ''}`;
    if (response.status === 429) {
      const reset = Number(response.headers['x-ratelimit-reset']);
      const wait = Number.isFinite(reset) && reset > 0 ? Math.max(0, Math.ceil(reset - Date.now())) : DEFAULT_RETRY_AFTER_MS;
      rateLimited(detail, wait);
    }
    if (answer && typeof answer.error === 'string' && /integration|token/i.test(answer.error)) {
      permanent(detail);
    }
    classify(response);
    return { providerId: undefined, status: `HTTP ${response.status}` };
  },
};
