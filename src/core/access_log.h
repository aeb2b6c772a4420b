/* access_log — one JSON line per finished request, written with a single
 * write() on an O_APPEND descriptor so lines from several workers never
 * interleave. Off unless the config names a destination. */
#ifndef UMBRA_ACCESS_LOG_H
#define UMBRA_ACCESS_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "http/h1.h"

struct access_entry {
    const char *client_ip;
    struct h1_str method, path, request_id; /* empty when the head never parsed */
    const char *route, *cluster;            /* NULL when not routed */
    int status;
    uint64_t bytes_in, bytes_out;
    double duration_s;
};

/** Opens `dest` ("-" = stderr, else a file appended to). Returns an fd, or
 *  -errno. */
int access_log_open(const char *dest);
/** Closes an fd from access_log_open (not stderr). */
void access_log_close(int fd);
/** Writes one line for e to fd. */
void access_log_write(int fd, const struct access_entry *e);

#endif
