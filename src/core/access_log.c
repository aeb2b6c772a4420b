/* access_log — JSON lines, one write each. */
#include "core/access_log.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/strbuf.h"

int access_log_open(const char *dest)
{
    if (strcmp(dest, "-") == 0) return STDERR_FILENO;
    int fd = open(dest, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    return fd < 0 ? -errno : fd;
}

void access_log_close(int fd)
{
    if (fd > STDERR_FILENO) close(fd);
}

static void json_str(struct strbuf *sb, const char *key, const char *p, size_t n)
{
    strbuf_printf(sb, ",\"%s\":\"", key);
    strbuf_json_escape(sb, p, n);
    strbuf_puts(sb, "\"");
}

void access_log_write(int fd, const struct access_entry *e)
{
    struct strbuf sb = STRBUF_INIT;
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strbuf_printf(&sb, "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\"", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  ts.tv_nsec / 1000000);
    json_str(&sb, "client", e->client_ip, strlen(e->client_ip));
    json_str(&sb, "method", e->method.p ? e->method.p : "", e->method.len);
    json_str(&sb, "path", e->path.p ? e->path.p : "", e->path.len);
    strbuf_printf(&sb, ",\"status\":%d,\"bytes_in\":%lu,\"bytes_out\":%lu,\"duration_ms\":%.3f",
                  e->status, (unsigned long)e->bytes_in, (unsigned long)e->bytes_out,
                  e->duration_s * 1000.0);
    if (e->route) json_str(&sb, "route", e->route, strlen(e->route));
    if (e->cluster) json_str(&sb, "cluster", e->cluster, strlen(e->cluster));
    if (e->request_id.len) json_str(&sb, "request_id", e->request_id.p, e->request_id.len);
    strbuf_puts(&sb, "}\n");
    ssize_t w = write(fd, sb.data, sb.len);
    (void)w; /* a lost access-log line must not fail the request */
    strbuf_free(&sb);
}
