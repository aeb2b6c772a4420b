/* log — stderr lines, written whole with one write() so that lines from
 * several worker threads never interleave. */
#include "core/log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int current_level = LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(enum log_level level) { atomic_store(&current_level, (int)level); }

int log_level_parse(const char *name)
{
    for (int i = 0; i < (int)(sizeof level_names / sizeof level_names[0]); i++)
        if (strcmp(name, level_names[i]) == 0) return i;
    return -1;
}

bool log_enabled(enum log_level level)
{
    return (int)level <= atomic_load_explicit(&current_level, memory_order_relaxed);
}

static void log_vmsg(enum log_level level, const char *subsystem, const char *fmt, va_list ap)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line,
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level], subsystem);
    if (n < 0) return;
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2) len = sizeof line - 2;
    line[len++] = '\n';
    /* A failed or short log write is not worth failing anything for. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void log_msg(enum log_level level, const char *subsystem, const char *fmt, ...)
{
    if (!log_enabled(level)) return;
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, subsystem, fmt, ap);
    va_end(ap);
}

void log_ratelimited(struct log_ratelimit *rl, enum log_level level, const char *subsystem,
                     const char *fmt, ...)
{
    if (!log_enabled(level)) return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    if (ts.tv_sec == rl->last_sec) {
        rl->suppressed++;
        return;
    }
    rl->last_sec = ts.tv_sec;
    if (rl->suppressed) {
        log_msg(level, subsystem, "(%u similar lines suppressed)", rl->suppressed);
        rl->suppressed = 0;
    }
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, subsystem, fmt, ap);
    va_end(ap);
}
