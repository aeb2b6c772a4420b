/* collector — one JSON line per request to a FILE, then a fixed answer.
 * The line is written and flushed before the answer is queued, so whoever
 * got the answer can read the line. Bodies are buffered whole by hsrv. */
#include "mirror/collector.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/strbuf.h"
#include "http/hsrv.h"

struct collector {
    struct hsrv *srv;
    struct collector_options opts;
    uint64_t count;
    struct strbuf line; /* reused between requests */
    struct log_ratelimit rl_write;
};

void collector_format_time(const struct timespec *ts, char *out, size_t outlen)
{
    struct tm tm;
    gmtime_r(&ts->tv_sec, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts->tv_nsec / 1000000);
}

static void collector_handle(const struct hsrv_request *req, struct hsrv_response *resp, void *ctx)
{
    struct collector *col = ctx;
    struct timespec ts;
    char when[40];
    clock_gettime(CLOCK_REALTIME, &ts);
    collector_format_time(&ts, when, sizeof when);
    strbuf_reset(&col->line);
    hsrv_request_json(req, when, col->opts.body, &col->line);
    strbuf_puts(&col->line, "\n");
    FILE *out = col->opts.out;
    if (fwrite(col->line.data, 1, col->line.len, out) != col->line.len || fflush(out) != 0)
        log_ratelimited(&col->rl_write, LOG_ERROR, "collect", "cannot write a record: %s",
                        strerror(errno));
    else __atomic_add_fetch(&col->count, 1, __ATOMIC_RELAXED);
    /* A 64 MiB body makes a line of ~90 MB; do not keep that around. */
    if (col->line.cap > 1024 * 1024) strbuf_free(&col->line);
    resp->status = col->opts.status;
}

struct collector *collector_start(struct ev_loop *loop, int listen_fd,
                                  const struct collector_options *opts)
{
    if (!opts->out || (opts->status && (opts->status < 200 || opts->status > 599))) return NULL;
    struct collector *col = calloc(1, sizeof *col);
    if (!col) return NULL;
    col->opts = *opts;
    if (!col->opts.status) col->opts.status = 200;
    if (!col->opts.max_body_bytes) col->opts.max_body_bytes = 64u * 1024 * 1024;
    struct hsrv_options hopts = {
        .name = "collect",
        .max_body_bytes = col->opts.max_body_bytes,
        .max_connections = 4096,
        .delay_ms = col->opts.delay_ms,
    };
    col->srv = hsrv_start(loop, listen_fd, &hopts, collector_handle, col);
    if (!col->srv) {
        free(col);
        return NULL;
    }
    return col;
}

void collector_stop(struct collector *col)
{
    if (!col) return;
    hsrv_stop(col->srv);
    fflush(col->opts.out);
    strbuf_free(&col->line);
    free(col);
}

uint64_t collector_count(const struct collector *col)
{
    return __atomic_load_n(&col->count, __ATOMIC_RELAXED);
}
