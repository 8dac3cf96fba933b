/*
 * Mattermost incoming webhooks, written in C.
 *
 * The target is the webhook URL (https://chat.example.com/hooks/<key>; the
 * key is the credential). The body is {"text": ...}, with a title as a
 * "####" heading above the body (Mattermost renders markdown, so markdown
 * passes through), and an optional `username` from the config. Text is
 * cut at 16,000 bytes, under Mattermost's default post size.
 *
 * Answers: 200 "ok" is delivered; 429 is rate-limited with Retry-After;
 * 401/403/404 (a deleted or disabled webhook) are permanent; 400 invalid;
 * 5xx retryable.
 */
#include <ctype.h>
#include <strings.h>
#include "notifyhub_plugin.h"

#define MAX_TEXT_BYTES 16000

void exports_notifyhub_plugin_handler_describe(exports_notifyhub_plugin_handler_plugin_info_t *ret) {
    full_string_dup(&ret->name, "mattermost");
    full_string_dup(&ret->version, "0.1.0");
    ret->platforms.len = 1;
    ret->platforms.ptr = malloc(sizeof(full_string_t));
    full_string_dup(&ret->platforms.ptr[0], "mattermost");
    ret->config_keys.len = 1;
    ret->config_keys.ptr = malloc(sizeof(notifyhub_plugin_types_config_key_t));
    full_string_dup(&ret->config_keys.ptr[0].name, "username");
    ret->config_keys.ptr[0].required = false;
    ret->config_keys.ptr[0].secret = false;
    full_string_dup(&ret->config_keys.ptr[0].description, "name to post as (if the webhook allows overriding it)");
    ret->rate_limits.len = 0;
    ret->rate_limits.ptr = NULL;
    full_string_dup(&ret->description, "Mattermost incoming webhooks (C plugin)");
}

/* Appends user text, breaking @channel, @all and @here with a zero-width
 * space after the `@`: Mattermost would otherwise notify everyone in the
 * channel because a message said so. */
static void put_defused(nh_buf *buf, const char *text, size_t len) {
    static const char *const pings[] = {"channel", "all", "here"};
    for (size_t i = 0; i < len; i++) {
        nh_buf_put(buf, text + i, 1);
        if (text[i] != '@') continue;
        for (size_t p = 0; p < sizeof pings / sizeof pings[0]; p++) {
            size_t n = strlen(pings[p]);
            if (len - i - 1 >= n && strncasecmp(text + i + 1, pings[p], n) == 0) {
                nh_buf_str(buf, "\xE2\x80\x8B");
                break;
            }
        }
    }
}

/* Whether the text holds anything but white space. */
static bool has_text(const uint8_t *text, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if (!isspace(text[i])) return true;
    }
    return false;
}

bool exports_notifyhub_plugin_handler_send(exports_notifyhub_plugin_handler_message_t *message,
                                           exports_notifyhub_plugin_handler_receipt_t *ret,
                                           exports_notifyhub_plugin_handler_send_error_t *err) {
    char *url = strndup((const char *)message->target.ptr, message->target.len);
    nh_buf text = {0};
    nh_buf_str(&text, "");
    if (message->title.is_some && has_text(message->title.val.ptr, message->title.val.len)) {
        nh_buf_str(&text, "#### ");
        put_defused(&text, (const char *)message->title.val.ptr, message->title.val.len);
        nh_buf_str(&text, "\n");
    }
    if (has_text(message->body.ptr, message->body.len)) {
        put_defused(&text, (const char *)message->body.ptr, message->body.len);
    } else {
        /* Mattermost refuses an empty text. */
        nh_buf_str(&text, "(empty message)");
    }
    if (text.len > MAX_TEXT_BYTES) {
        size_t cut = MAX_TEXT_BYTES - 20;
        while (cut > 0 && ((unsigned char)text.data[cut] & 0xC0) == 0x80) cut--;
        text.len = cut;
        nh_buf_str(&text, "\xE2\x80\xA6 [truncated]");
    }

    nh_buf body = {0};
    nh_buf_str(&body, "{\"text\":\"");
    nh_buf_json(&body, text.data, text.len);
    nh_buf_str(&body, "\"");
    char *username = nh_config("username");
    if (username) {
        nh_buf_str(&body, ",\"username\":\"");
        nh_buf_json(&body, username, strlen(username));
        nh_buf_str(&body, "\"");
        free(username);
    }
    nh_buf_str(&body, "}");
    free(text.data);

    printf("posting to a Mattermost webhook (%zu bytes)\n", body.len);
    fflush(stdout);
    nh_response response;
    bool sent = nh_post(url, "application/json", body.data, body.len, &response, err);
    free(body.data);
    free(url);
    if (!sent) return false;

    bool ok = nh_classify(&response, err);
    if (ok && response.status == 200) {
        ret->provider_id.is_some = false;
        full_string_dup(&ret->status, "ok");
    } else if (ok) {
        ok = nh_retryable(err, nh_format("unexpected answer from Mattermost: HTTP %u", response.status));
    }
    free(response.body.data);
    return ok;
}
