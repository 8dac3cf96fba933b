/*
 * Helpers for notifyhub plugins written in C, over the bindings that
 * wit-bindgen generates for the `notifyhub:plugin/full` world (full.h): the
 * contract plus one-call HTTP and SMTP, of which a component imports only
 * what it calls.
 *
 * - nh_post(): a blocking HTTP POST. A body of up to 512 KiB goes to the
 *   host with the request, and the response comes back whole, in one call
 *   (`notifyhub:http/client`); a larger one is streamed through `wasi:http`.
 *   Either way the host enforces the plugin's allowlist, timeouts and size
 *   caps;
 * - nh_retryable(), nh_rate_limited(), nh_permanent(), nh_invalid(): fill
 *   in the four delivery error classes;
 * - nh_classify(): the usual meaning of an HTTP status;
 * - nh_buf: a growable byte buffer, with JSON string escaping;
 * - printf() works: the host logs each line with the plugin and task.
 *
 * Strings handed back to the host (receipts, errors, describe()) must be
 * malloc'd: the generated code frees them after the call. The helpers are
 * `static inline`: a plugin that uses only some of them still builds with
 * -Wall -Werror.
 */
#ifndef NOTIFYHUB_PLUGIN_H
#define NOTIFYHUB_PLUGIN_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "full.h"

#define NH_MAX_RESPONSE_BYTES (1 << 20)
/* The largest body `notifyhub:http/client` takes in one call. */
#define NH_ONE_CALL_MAX_BODY (512 * 1024)
#define NH_DEFAULT_RETRY_AFTER_MS 1000

typedef notifyhub_plugin_types_send_error_t nh_error;

/* A growable byte buffer. */
typedef struct {
    char *data;
    size_t len, cap;
} nh_buf;

static inline void nh_buf_put(nh_buf *b, const char *bytes, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->data = realloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static inline void nh_buf_str(nh_buf *b, const char *s) { nh_buf_put(b, s, strlen(s)); }

/* Appends `n` bytes of UTF-8 as the contents of a JSON string. */
static inline void nh_buf_json(nh_buf *b, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char escape[8];
        if (c == '"' || c == '\\') {
            escape[0] = '\\';
            escape[1] = (char)c;
            nh_buf_put(b, escape, 2);
        } else if (c == '\n') {
            nh_buf_put(b, "\\n", 2);
        } else if (c < 0x20) {
            snprintf(escape, sizeof escape, "\\u%04x", c);
            nh_buf_put(b, escape, 6);
        } else {
            nh_buf_put(b, (const char *)&c, 1);
        }
    }
}

static inline char *nh_format(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(NULL, 0, fmt, args);
    va_end(args);
    char *out = malloc((size_t)n + 1);
    va_start(args, fmt);
    vsnprintf(out, (size_t)n + 1, fmt, args);
    va_end(args);
    return out;
}

static inline void nh_take(full_string_t *dst, char *owned) {
    dst->ptr = (uint8_t *)owned;
    dst->len = strlen(owned);
}

static inline bool nh_retryable(nh_error *err, char *message) {
    err->tag = NOTIFYHUB_PLUGIN_TYPES_SEND_ERROR_RETRYABLE;
    nh_take(&err->val.retryable.message, message);
    err->val.retryable.retry_after_ms.is_some = false;
    return false;
}

static inline bool nh_rate_limited(nh_error *err, char *message, uint64_t retry_after_ms) {
    err->tag = NOTIFYHUB_PLUGIN_TYPES_SEND_ERROR_RATE_LIMITED;
    nh_take(&err->val.rate_limited.message, message);
    err->val.rate_limited.retry_after_ms = retry_after_ms;
    return false;
}

static inline bool nh_permanent(nh_error *err, char *message) {
    err->tag = NOTIFYHUB_PLUGIN_TYPES_SEND_ERROR_PERMANENT;
    nh_take(&err->val.permanent, message);
    return false;
}

static inline bool nh_invalid(nh_error *err, char *message) {
    err->tag = NOTIFYHUB_PLUGIN_TYPES_SEND_ERROR_INVALID;
    nh_take(&err->val.invalid, message);
    return false;
}

/* A configuration value (malloc'd, NUL-terminated) or NULL. */
static inline char *nh_config(const char *key) {
    full_string_t k, value;
    full_string_set(&k, key);
    if (!notifyhub_plugin_host_get_config(&k, &value)) return NULL;
    char *out = strndup((const char *)value.ptr, value.len);
    full_string_free(&value);
    return out;
}

typedef struct {
    uint16_t status;
    nh_buf body;
    /* Retry-After in milliseconds, or 0. */
    uint64_t retry_after_ms;
} nh_response;

/* Scheme and host only: webhook paths carry credentials. */
static inline char *nh_redacted(const char *url) {
    const char *host = strstr(url, "://");
    host = host ? host + 3 : url;
    size_t n = strcspn(host, "/?");
    return nh_format("%.*s%.*s", (int)(host - url), url, (int)n, host);
}

static inline bool nh_transport(nh_error *err, const notifyhub_http_client_error_code_t *code, const char *url) {
    char *where = nh_redacted(url);
    bool r;
    if (code->tag == WASI_HTTP_TYPES_ERROR_CODE_HTTP_REQUEST_DENIED) {
        r = nh_permanent(err, nh_format("the host denied the request to %s: add it to the plugin's allowed_hosts", where));
    } else {
        r = nh_retryable(err, nh_format("request to %s failed (wasi:http error %d)", where, code->tag));
    }
    free(where);
    return r;
}

/* nh_post() through `wasi:http`, the body written 4 KiB at a time. */
static inline bool nh_post_streamed(const char *url, const char *content_type, const char *body, size_t body_len,
                             nh_response *out, nh_error *err) {
    const char *rest;
    wasi_http_types_scheme_t scheme = {0};
    if (strncmp(url, "https://", 8) == 0) {
        scheme.tag = WASI_HTTP_TYPES_SCHEME_HTTPS;
        rest = url + 8;
    } else if (strncmp(url, "http://", 7) == 0) {
        scheme.tag = WASI_HTTP_TYPES_SCHEME_HTTP;
        rest = url + 7;
    } else {
        return nh_invalid(err, strdup("the target must be an http:// or https:// URL"));
    }
    size_t host_len = strcspn(rest, "/?");
    if (host_len == 0) return nh_invalid(err, strdup("the target URL has no host"));
    char *authority = strndup(rest, host_len);
    char *path = rest[host_len] == '\0' ? strdup("/")
                 : rest[host_len] == '?' ? nh_format("/%s", rest + host_len)
                                         : strdup(rest + host_len);

    /* A known length spares servers a chunked body. */
    char length[24];
    snprintf(length, sizeof length, "%zu", body_len);
    wasi_http_types_tuple2_field_name_field_value_t header[2] = {
        {.f0 = {(uint8_t *)"content-type", 12}, .f1 = {(uint8_t *)content_type, strlen(content_type)}},
        {.f0 = {(uint8_t *)"content-length", 14}, .f1 = {(uint8_t *)length, strlen(length)}},
    };
    wasi_http_types_list_tuple2_field_name_field_value_t headers = {header, 2};
    wasi_http_types_own_fields_t fields;
    wasi_http_types_header_error_t header_error;
    if (!wasi_http_types_static_fields_from_list(&headers, &fields, &header_error)) {
        free(authority);
        free(path);
        return nh_invalid(err, strdup("invalid request header"));
    }
    wasi_http_types_own_outgoing_request_t request = wasi_http_types_constructor_outgoing_request(fields);
    wasi_http_types_borrow_outgoing_request_t r = wasi_http_types_borrow_outgoing_request(request);
    wasi_http_types_method_t method = {.tag = WASI_HTTP_TYPES_METHOD_POST};
    full_string_t authority_s = {(uint8_t *)authority, strlen(authority)};
    full_string_t path_s = {(uint8_t *)path, strlen(path)};
    wasi_http_types_method_outgoing_request_set_method(r, &method);
    wasi_http_types_method_outgoing_request_set_scheme(r, &scheme);
    wasi_http_types_method_outgoing_request_set_authority(r, &authority_s);
    wasi_http_types_method_outgoing_request_set_path_with_query(r, &path_s);
    free(authority);
    free(path);

    wasi_http_types_own_outgoing_body_t outgoing_body;
    wasi_http_types_method_outgoing_request_body(r, &outgoing_body);
    wasi_http_outgoing_handler_own_future_incoming_response_t future;
    wasi_http_outgoing_handler_error_code_t code;
    if (!wasi_http_outgoing_handler_handle(request, NULL, &future, &code)) {
        bool result = nh_transport(err, &code, url);
        wasi_http_types_error_code_free(&code);
        return result;
    }
    /* A denied or failed request closes the body; the response says why. */
    wasi_http_types_own_output_stream_t stream;
    if (wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(outgoing_body), &stream)) {
        wasi_io_streams_stream_error_t stream_error;
        for (size_t at = 0; at < body_len; at += 4096) {
            size_t n = body_len - at < 4096 ? body_len - at : 4096;
            full_list_u8_t chunk = {(uint8_t *)body + at, n};
            if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(
                    wasi_io_streams_borrow_output_stream(stream), &chunk, &stream_error))
                break;
        }
        wasi_io_streams_output_stream_drop_own(stream);
    }
    wasi_http_types_error_code_t finish_error;
    if (!wasi_http_types_static_outgoing_body_finish(outgoing_body, NULL, &finish_error))
        wasi_http_types_error_code_free(&finish_error);

    wasi_http_types_borrow_future_incoming_response_t f = wasi_http_types_borrow_future_incoming_response(future);
    wasi_http_types_own_pollable_t ready = wasi_http_types_method_future_incoming_response_subscribe(f);
    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
    wasi_io_poll_pollable_drop_own(ready);
    wasi_http_types_result_result_own_incoming_response_error_code_void_t got;
    bool have = wasi_http_types_method_future_incoming_response_get(f, &got);
    wasi_http_types_future_incoming_response_drop_own(future);
    if (!have || got.is_err) return nh_retryable(err, strdup("the HTTP response was lost"));
    if (got.val.ok.is_err) {
        bool result = nh_transport(err, &got.val.ok.val.err, url);
        wasi_http_types_error_code_free(&got.val.ok.val.err);
        return result;
    }
    wasi_http_types_own_incoming_response_t response = got.val.ok.val.ok;
    wasi_http_types_borrow_incoming_response_t resp = wasi_http_types_borrow_incoming_response(response);
    out->status = wasi_http_types_method_incoming_response_status(resp);
    out->retry_after_ms = 0;
    out->body = (nh_buf){0};
    nh_buf_str(&out->body, "");

    wasi_http_types_own_headers_t response_headers = wasi_http_types_method_incoming_response_headers(resp);
    wasi_http_types_list_tuple2_field_name_field_value_t entries;
    wasi_http_types_method_fields_entries(wasi_http_types_borrow_fields(response_headers), &entries);
    for (size_t i = 0; i < entries.len; i++) {
        if (entries.ptr[i].f0.len == 11 && strncasecmp((char *)entries.ptr[i].f0.ptr, "retry-after", 11) == 0) {
            char *value = strndup((char *)entries.ptr[i].f1.ptr, entries.ptr[i].f1.len);
            out->retry_after_ms = (uint64_t)(atof(value) * 1000.0);
            free(value);
        }
    }
    wasi_http_types_list_tuple2_field_name_field_value_free(&entries);
    wasi_http_types_fields_drop_own(response_headers);

    wasi_http_types_own_incoming_body_t incoming;
    if (wasi_http_types_method_incoming_response_consume(resp, &incoming)) {
        wasi_http_types_own_input_stream_t input;
        if (wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(incoming), &input)) {
            full_list_u8_t chunk;
            wasi_io_streams_stream_error_t stream_error;
            while (out->body.len < NH_MAX_RESPONSE_BYTES &&
                   wasi_io_streams_method_input_stream_blocking_read(
                       wasi_io_streams_borrow_input_stream(input), 65536, &chunk, &stream_error)) {
                nh_buf_put(&out->body, (char *)chunk.ptr, chunk.len);
                full_list_u8_free(&chunk);
            }
            wasi_io_streams_input_stream_drop_own(input);
        }
        wasi_http_types_incoming_body_drop_own(incoming);
    }
    wasi_http_types_incoming_response_drop_own(response);
    return true;
}

/*
 * POSTs `body` with `content_type` to `url`: up to 512 KiB in one call to
 * the host (`notifyhub:http/client`), streamed through `wasi:http` past
 * that. On success fills `out` and returns true; on a transport failure
 * fills `err` and returns false.
 */
static inline bool nh_post(const char *url, const char *content_type, const char *body, size_t body_len,
                    nh_response *out, nh_error *err) {
    if (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0)
        return nh_invalid(err, strdup("the target must be an http:// or https:// URL"));
    if (body_len > NH_ONE_CALL_MAX_BODY) return nh_post_streamed(url, content_type, body, body_len, out, err);
    full_tuple2_string_list_u8_t header = {
        .f0 = {(uint8_t *)"content-type", 12},
        .f1 = {(uint8_t *)content_type, strlen(content_type)},
    };
    notifyhub_http_client_request_t request = {
        .method = {.tag = WASI_HTTP_TYPES_METHOD_POST},
        .url = {(uint8_t *)url, strlen(url)},
        .headers = {&header, 1},
        .body = {(uint8_t *)body, body_len},
    };
    notifyhub_http_client_response_t response;
    notifyhub_http_client_http_error_t error;
    if (!notifyhub_http_client_send(&request, &response, &error)) {
        bool result;
        if (error.tag == NOTIFYHUB_HTTP_CLIENT_HTTP_ERROR_INVALID) {
            char *where = nh_redacted(url);
            result = nh_invalid(err, nh_format("the request to %s cannot be sent: %.*s", where,
                                               (int)error.val.invalid.len, (char *)error.val.invalid.ptr));
            free(where);
        } else {
            result = nh_transport(err, &error.val.transport, url);
        }
        notifyhub_http_client_http_error_free(&error);
        return result;
    }
    out->status = response.status;
    out->retry_after_ms = 0;
    for (size_t i = 0; i < response.headers.len; i++) {
        full_tuple2_string_list_u8_t *h = &response.headers.ptr[i];
        if (h->f0.len == 11 && strncmp((char *)h->f0.ptr, "retry-after", 11) == 0) {
            char *value = strndup((char *)h->f1.ptr, h->f1.len);
            out->retry_after_ms = (uint64_t)(atof(value) * 1000.0);
            free(value);
        }
    }
    out->body = (nh_buf){0};
    size_t n = response.body.len < NH_MAX_RESPONSE_BYTES ? response.body.len : NH_MAX_RESPONSE_BYTES;
    nh_buf_put(&out->body, (char *)response.body.ptr, n);
    notifyhub_http_client_response_free(&response);
    return true;
}

/*
 * The usual meaning of an unsuccessful status: 429 rate limited;
 * 408/425/5xx retryable; 401/403/404/410 permanent; other 4xx invalid.
 * Returns true for 2xx.
 */
static inline bool nh_classify(const nh_response *response, nh_error *err) {
    uint16_t s = response->status;
    if (s >= 200 && s < 300) return true;
    char *detail = nh_format("HTTP %u: %.300s", s, response->body.data);
    if (s == 429)
        return nh_rate_limited(err, detail, response->retry_after_ms ? response->retry_after_ms : NH_DEFAULT_RETRY_AFTER_MS);
    if (s == 408 || s == 425 || s >= 500) return nh_retryable(err, detail);
    if (s == 401 || s == 403 || s == 404 || s == 410) return nh_permanent(err, detail);
    return nh_invalid(err, detail);
}

#endif
