/* admin — routes the admin endpoints to core/control.h and formats the
 * answers. Runs on the main thread; holds no figures of its own and does no
 * authentication (bind it to loopback). */
#include "admin/admin.h"

#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/control.h"
#include "http/hsrv.h"

static struct hsrv *admin_srv;

/* Answers one admin request; `query` is the part of the target after '?'
 * (NUL-terminated, "" when absent). */
typedef void (*admin_fn)(const char *query, struct hsrv_response *resp);

struct admin_route {
    const char *path;
    const char *method; /* "GET" routes answer HEAD too */
    admin_fn fn;
};

static void admin_text(struct hsrv_response *resp, int status, const char *text, size_t len)
{
    hsrv_response_set(resp, status, "text/plain; charset=utf-8", text, len);
}

static void admin_healthz(const char *query, struct hsrv_response *resp)
{
    if (control_healthy()) admin_text(resp, 200, "ok\n", 3);
    else admin_text(resp, 503, "draining\n", 9);
}

static void admin_metrics(const char *query, struct hsrv_response *resp)
{
    hsrv_response_header(resp, "Content-Type", "text/plain; version=0.0.4");
    control_metrics(&resp->body);
}

static void admin_stats(const char *query, struct hsrv_response *resp)
{
    hsrv_response_header(resp, "Content-Type", "application/json");
    control_stats_json(&resp->body);
    strbuf_puts(&resp->body, "\n");
}

static void admin_runtime_get(const char *query, struct hsrv_response *resp)
{
    hsrv_response_header(resp, "Content-Type", "application/json");
    control_runtime_json(&resp->body);
    strbuf_puts(&resp->body, "\n");
}

static int admin_hex(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes s[0..n) ('+' is a space, %XX a byte) into a new string. A '%' not
 * followed by two hex digits stays a literal '%', so "fraction=5%" typed into
 * a shell works. Returns NULL when the result would hold a NUL. */
static char *admin_url_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    if (!out) return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '+') {
            out[j++] = ' ';
        } else if (s[i] == '%' && i + 2 < n && (hi = admin_hex(s[i + 1])) >= 0 &&
                   (lo = admin_hex(s[i + 2])) >= 0) {
            out[j++] = (char)(hi << 4 | lo);
            i += 2;
            if (out[j - 1] == '\0') {
                free(out);
                return NULL;
            }
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = '\0';
    return out;
}

/* Applies one "KEY=VALUE" pair. Returns 0, or -1 with a message in err. */
static int admin_runtime_pair(const char *pair, size_t n, struct strbuf *err)
{
    const char *eq = memchr(pair, '=', n);
    if (!eq || eq == pair) {
        strbuf_printf(err, "expected KEY=VALUE, got \"%.*s\"\n", (int)n, pair);
        return -1;
    }
    int rc = -1;
    char *key = admin_url_decode(pair, (size_t)(eq - pair));
    char *value = admin_url_decode(eq + 1, n - (size_t)(eq - pair) - 1);
    if (!key || !value) {
        strbuf_printf(err, "malformed escape in \"%.*s\"\n", (int)n, pair);
        goto cleanup;
    }
    size_t before = err->len;
    rc = control_runtime_set(key, value, err);
    if (rc < 0) {
        if (err->len == before) strbuf_printf(err, "cannot set %s", key);
        if (err->data[err->len - 1] != '\n') strbuf_puts(err, "\n");
    }
cleanup:
    free(key);
    free(value);
    return rc;
}

/* Pairs are applied in order and the first bad one stops the request; the
 * ones before it stay applied (control has no transaction to roll back). */
static void admin_runtime_post(const char *query, struct hsrv_response *resp)
{
    struct strbuf err = STRBUF_INIT;
    size_t applied = 0;
    const char *p = query;
    while (*p) {
        size_t n = strcspn(p, "&");
        if (n && admin_runtime_pair(p, n, &err) < 0) break;
        applied += n != 0;
        p += n + (p[n] == '&');
    }
    if (err.len) {
        admin_text(resp, 400, err.data, err.len);
    } else if (!applied) {
        admin_text(resp, 400, "usage: POST /runtime?KEY=VALUE[&KEY=VALUE...]\n", 47);
    } else {
        admin_runtime_get(query, resp);
    }
    strbuf_free(&err);
}

static void admin_reload(const char *query, struct hsrv_response *resp)
{
    struct strbuf err = STRBUF_INIT;
    if (control_reload(&err) == 0) {
        admin_text(resp, 200, "reloaded\n", 9);
    } else {
        if (!err.len) strbuf_puts(&err, "reload failed");
        if (err.data[err.len - 1] != '\n') strbuf_puts(&err, "\n");
        admin_text(resp, 400, err.data, err.len);
    }
    strbuf_free(&err);
}

/* one route per row */
// clang-format off
static const struct admin_route admin_routes[] = {
    {"/healthz", "GET", admin_healthz},
    {"/metrics", "GET", admin_metrics},
    {"/stats", "GET", admin_stats},
    {"/runtime", "GET", admin_runtime_get},
    {"/runtime", "POST", admin_runtime_post},
    {"/reload", "POST", admin_reload},
};
// clang-format on
#define ADMIN_NROUTES (sizeof admin_routes / sizeof admin_routes[0])

static bool admin_method_matches(const char *route_method, const char *method)
{
    return strcmp(route_method, method) == 0 ||
           (strcmp(route_method, "GET") == 0 && strcmp(method, "HEAD") == 0);
}

static void admin_not_allowed(const char *path, size_t len, struct hsrv_response *resp)
{
    struct strbuf allow = STRBUF_INIT;
    for (size_t i = 0; i < ADMIN_NROUTES; i++) {
        if (strlen(admin_routes[i].path) != len || memcmp(admin_routes[i].path, path, len) != 0)
            continue;
        if (allow.len) strbuf_puts(&allow, ", ");
        strbuf_puts(&allow, admin_routes[i].method);
        if (strcmp(admin_routes[i].method, "GET") == 0) strbuf_puts(&allow, ", HEAD");
    }
    hsrv_response_header(resp, "Allow", allow.data);
    admin_text(resp, 405, "method not allowed\n", 19);
    strbuf_free(&allow);
}

static void admin_handle(const struct hsrv_request *req, struct hsrv_response *resp, void *ctx)
{
    const char *target = req->target;
    size_t len = strcspn(target, "?");
    const char *query = target[len] ? target + len + 1 : "";
    bool path_known = false;
    for (size_t i = 0; i < ADMIN_NROUTES; i++) {
        const struct admin_route *r = &admin_routes[i];
        if (strlen(r->path) != len || memcmp(r->path, target, len) != 0) continue;
        path_known = true;
        if (admin_method_matches(r->method, req->method)) {
            r->fn(query, resp);
            return;
        }
    }
    if (path_known) admin_not_allowed(target, len, resp);
    else admin_text(resp, 404, "not found\n", 10);
}

int admin_start(struct ev_loop *loop, int listen_fd)
{
    if (admin_srv) return -1;
    struct hsrv_options opts = {
        .name = "admin",
        .max_body_bytes = 64 * 1024,
        .idle_timeout_ms = 30 * 1000,
        .max_connections = 64,
    };
    /* hsrv closes the fd it serves; the caller keeps (and closes) its own. */
    int fd = fcntl(listen_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return -1;
    admin_srv = hsrv_start(loop, fd, &opts, admin_handle, NULL);
    if (!admin_srv) {
        close(fd);
        return -1;
    }
    return 0;
}

void admin_stop(void)
{
    hsrv_stop(admin_srv);
    admin_srv = NULL;
}
