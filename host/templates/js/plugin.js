// {{name}}: POSTs {"title", "text", "task_id"} to the task's target URL.
//
// Replace the body of `send` with your platform's API. notifyhub-plugin.js
// throws the four error classes and classifies HTTP statuses; check what
// your platform puts in a successful-looking answer (some report errors
// inside HTTP 200).

import { classify, request } from './notifyhub-plugin.js';

export const handler = {
  describe() {
    return {
      name: '{{name}}',
      version: '0.1.0',
      platforms: ['{{name}}'],
      configKeys: [],
      rateLimits: [],
      description: '{{name}} notifications',
    };
  },

  send(message) {
    const body = { title: message.title, text: message.body, task_id: message.taskId };
    console.log('posting the message');
    const response = request(
      'POST',
      message.target,
      [['content-type', 'application/json']],
      new TextEncoder().encode(JSON.stringify(body)),
    );
    classify(response);
    return { providerId: undefined, status: `HTTP ${response.status}` };
  },
};
