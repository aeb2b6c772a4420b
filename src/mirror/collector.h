/* collector — a shadow sink: answers every request (status and delay
 * configurable) and appends one JSON line per request to a FILE, for tests,
 * demos and staging checks. It does not compare, forward or rotate files. */
#ifndef UMBRA_COLLECTOR_H
#define UMBRA_COLLECTOR_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

/** Collector options; a zero field takes its default. */
struct collector_options {
    FILE *out;             /* where the JSON lines go (borrowed; required) */
    bool body;             /* add "body" (base64) to each line */
    int status;            /* status of every answer, 200..599; default 200 */
    uint64_t delay_ms;     /* hold every answer this long; default 0 */
    size_t max_body_bytes; /* bigger bodies get 413 and no line; default 64 MiB */
};

struct collector;

/**
 * Starts a collector on `listen_fd` (listening, non-blocking) on `loop`.
 * On success it owns listen_fd; on failure (NULL) the caller does. `opts` is
 * copied, opts->out is borrowed and must outlive the collector; NULL also
 * when out is missing or status is not 200..599. Each line is
 * {"time", "method", "target", "version", "headers", "body_length",
 * "body_sha256"[, "body"]} followed by '\n', flushed before the answer goes out.
 */
struct collector *collector_start(struct ev_loop *loop, int listen_fd,
                                  const struct collector_options *opts);

/** Closes the listener and every connection, flushes out, frees the
 *  collector (out stays open: the caller's). NULL is fine. */
void collector_stop(struct collector *col);

/** Lines written so far; may be read from any thread. */
uint64_t collector_count(const struct collector *col);

/** Formats `ts` as RFC 3339 UTC with milliseconds ("2024-05-01T12:00:00.123Z")
 *  into out (at least 25 bytes). */
void collector_format_time(const struct timespec *ts, char *out, size_t outlen);

#endif
