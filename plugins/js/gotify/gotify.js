// Gotify (self-hosted push), written in JavaScript.
//
// The target is the server's base URL (`https://gotify.example.com`); the
// application token is the secret `app_token`, sent as `X-Gotify-Key`. The
// body is `{title, message, priority, extras}`: priority low 2, normal 5,
// high 8; markdown is marked with `client::display` so the apps render it.
//
// Answers: 200 with the created message (its id is the receipt's provider
// id). Errors are `{"error", "errorCode", "errorDescription"}`: 401/403
// (bad token) are permanent, 400 (e.g. "Field 'message' is required")
// invalid, 5xx retryable. Gotify has no rate limit.

import { classify, config, invalid, permanent, request } from '../notifyhub-plugin.js';

const PRIORITIES = { low: 2, normal: 5, high: 8 };

export const handler = {
  describe() {
    return {
      name: 'gotify',
      version: '0.1.0',
      platforms: ['gotify'],
      configKeys: [
        { name: 'app_token', required: true, secret: true, description: 'the application token' },
      ],
      rateLimits: [],
      description: 'Gotify servers (JavaScript plugin)',
    };
  },

  send(message) {
    const token = config('app_token');
    if (!token) invalid('config key `app_token` is not set (a secret in the manifest)');
    if (!/^https?:\/\/[^/]+/.test(message.target)) {
      invalid("the target must be the Gotify server's URL");
    }
    // Gotify refuses an empty message ("Field 'message' is required").
    const document = {
      message: message.body.trim() ? message.body : '(empty message)',
      priority: PRIORITIES[message.priority] ?? 5,
    };
    if (message.title !== undefined && message.title !== null && message.title.trim()) {
      document.title = message.title;
    }
    if (message.format === 'markdown') {
      document.extras = { 'client::display': { contentType: 'text/markdown' } };
    }
    console.log(`posting a ${message.format} message`);
    const url = message.target.replace(/\/+$/, '') + '/message';
    const response = request(
      'POST',
      url,
      [['content-type', 'application/json'], ['x-gotify-key', token]],
      new TextEncoder().encode(JSON.stringify(document)),
    );
    const answer = response.json();
    if (response.status === 200 && answer && answer.id !== undefined) {
      return { providerId: String(answer.id), status: 'ok' };
    }
    if (answer && answer.errorCode) {
      const detail = `HTTP ${response.status}: ${answer.error}: ${answer.errorDescription}`;
      if (response.status === 401 || response.status === 403) permanent(detail);
      if (response.status === 400) invalid(detail);
    }
    classify(response);
    return { providerId: undefined, status: `HTTP ${response.status}` };
  },
};
