/* strbuf — a growable byte string for building text off the hot path
 * (metrics, JSON, error messages, serialized heads). Not for body data:
 * bodies travel in refcounted chunks (core/buf.h). */
#ifndef UMBRA_STRBUF_H
#define UMBRA_STRBUF_H

#include <stdarg.h>
#include <stddef.h>

struct strbuf {
    char *data; /* always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
};

/** An empty strbuf, for initializers (kept from clang-format 14, which would
 *  split the braces over four lines). */
// clang-format off
#define STRBUF_INIT {NULL, 0, 0}
// clang-format on

/** Appends n bytes. Aborts on allocation failure (these buffers are small). */
void strbuf_append(struct strbuf *sb, const void *p, size_t n);
/** Appends a NUL-terminated string. */
void strbuf_puts(struct strbuf *sb, const char *s);
/** Appends printf-formatted text. */
void strbuf_printf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void strbuf_vprintf(struct strbuf *sb, const char *fmt, va_list ap);
/** Appends s as the body of a JSON string (without quotes), escaping as needed. */
void strbuf_json_escape(struct strbuf *sb, const char *s, size_t n);
/** Empties without freeing. */
void strbuf_reset(struct strbuf *sb);
/** Frees the storage; the strbuf is empty and reusable after. */
void strbuf_free(struct strbuf *sb);

#endif
