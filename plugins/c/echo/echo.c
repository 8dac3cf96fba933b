/*
 * echo (tests only): POSTs the message's body, as it is, to the target URL
 * with `nh_post`, whatever its size: it exercises both of the helper's
 * paths (one call, and streamed past 512 KiB).
 */
#include "notifyhub_plugin.h"

void exports_notifyhub_plugin_handler_describe(exports_notifyhub_plugin_handler_plugin_info_t *ret) {
    full_string_dup(&ret->name, "echo");
    full_string_dup(&ret->version, "0.1.0");
    ret->platforms.len = 1;
    ret->platforms.ptr = malloc(sizeof(full_string_t));
    full_string_dup(&ret->platforms.ptr[0], "echo");
    ret->config_keys.len = 0;
    ret->config_keys.ptr = NULL;
    ret->rate_limits.len = 0;
    ret->rate_limits.ptr = NULL;
    full_string_dup(&ret->description, "POSTs the message body as it is (tests only)");
}

bool exports_notifyhub_plugin_handler_send(exports_notifyhub_plugin_handler_message_t *message,
                                           exports_notifyhub_plugin_handler_receipt_t *ret,
                                           exports_notifyhub_plugin_handler_send_error_t *err) {
    char *url = strndup((const char *)message->target.ptr, message->target.len);
    nh_response response;
    bool sent = nh_post(url, "text/plain", (const char *)message->body.ptr, message->body.len, &response, err);
    free(url);
    if (!sent) return false;
    bool ok = nh_classify(&response, err);
    if (ok) {
        ret->provider_id.is_some = false;
        full_string_dup(&ret->status, "ok");
    }
    free(response.body.data);
    return ok;
}
