/* log — one line per event on stderr, with a level and a subsystem prefix.
 * Rate limiting is for events that a peer can trigger at line rate (drops,
 * rejects): such lines go through log_ratelimited() so a storm costs nothing. */
#ifndef UMBRA_LOG_H
#define UMBRA_LOG_H

#include <stdarg.h>
#include <stdbool.h>

enum log_level {
    LOG_ERROR = 0, /* something failed and was not recovered */
    LOG_WARN,      /* something failed and was recovered (a drop, a reject) */
    LOG_INFO,      /* lifecycle: start, reload, drain, listen */
    LOG_DEBUG,     /* per-request detail; off by default */
};

/** Sets the lowest level printed. Default LOG_INFO. */
void log_set_level(enum log_level level);
/** Parses "error", "warn", "info", "debug"; returns -1 if unknown. */
int log_level_parse(const char *name);
/** True when a line at `level` would be printed. */
bool log_enabled(enum log_level level);

/** Prints "TIME LEVEL subsystem: message" on stderr as one write(). */
void log_msg(enum log_level level, const char *subsystem, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** State for one rate-limited log site: at most one line per second, and the
 *  next printed line says how many were suppressed. Keep one per site, per
 *  thread (it is not atomic). */
struct log_ratelimit {
    long last_sec;
    unsigned suppressed;
};

/** log_msg() through a per-site limiter. */
void log_ratelimited(struct log_ratelimit *rl, enum log_level level, const char *subsystem,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define log_error(sub, ...) log_msg(LOG_ERROR, sub, __VA_ARGS__)
#define log_warn(sub, ...) log_msg(LOG_WARN, sub, __VA_ARGS__)
#define log_info(sub, ...) log_msg(LOG_INFO, sub, __VA_ARGS__)
#define log_debug(sub, ...) \
    do { \
        if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, sub, __VA_ARGS__); \
    } while (0)

#endif
