/* buf — chunks with per-thread recycling, and slice queues. */
#include "core/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Enough recycled chunks to absorb bursts without holding much idle memory. */
#define FREELIST_MAX 256

static _Thread_local struct chunk *freelist;
static _Thread_local size_t freelist_len;
static _Thread_local size_t live_bytes;

struct chunk *chunk_new(size_t cap)
{
    struct chunk *c;
    if (cap <= BUF_CHUNK_SIZE && freelist) {
        c = freelist;
        freelist = c->next_free;
        freelist_len--;
    } else {
        size_t real = cap <= BUF_CHUNK_SIZE ? BUF_CHUNK_SIZE : cap;
        c = malloc(sizeof *c + real);
        if (!c) abort();
        c->cap = (uint32_t)real;
    }
    c->refs = 1;
    c->next_free = NULL;
    live_bytes += c->cap;
    return c;
}

void chunk_unref(struct chunk *c)
{
    if (--c->refs) return;
    live_bytes -= c->cap;
    if (c->cap == BUF_CHUNK_SIZE && freelist_len < FREELIST_MAX) {
        c->next_free = freelist;
        freelist = c;
        freelist_len++;
        return;
    }
    free(c);
}

size_t chunk_thread_bytes(void) { return live_bytes; }

void chunk_thread_cleanup(void)
{
    while (freelist) {
        struct chunk *c = freelist;
        freelist = c->next_free;
        free(c);
    }
    freelist_len = 0;
}

void bufq_init(struct bufq *q) { memset(q, 0, sizeof *q); }

static struct bufq_seg *seg_at(const struct bufq *q, size_t i)
{
    return &q->segs[(q->head + i) % q->cap];
}

void bufq_clear(struct bufq *q)
{
    for (size_t i = 0; i < q->count; i++) chunk_unref(seg_at(q, i)->c);
    free(q->segs);
    if (q->scratch) chunk_unref(q->scratch);
    memset(q, 0, sizeof *q);
}

const struct bufq_seg *bufq_seg(const struct bufq *q, size_t i) { return seg_at(q, i); }

static void bufq_grow(struct bufq *q)
{
    size_t ncap = q->cap ? q->cap * 2 : 8;
    struct bufq_seg *n = malloc(ncap * sizeof *n);
    if (!n) abort();
    for (size_t i = 0; i < q->count; i++) n[i] = *seg_at(q, i);
    free(q->segs);
    q->segs = n;
    q->head = 0;
    q->cap = ncap;
}

void bufq_push(struct bufq *q, struct chunk *c, const char *p, size_t len)
{
    if (len == 0) return;
    if (q->count) {
        struct bufq_seg *last = seg_at(q, q->count - 1);
        if (last->c == c && last->p + last->len == p) { /* contiguous: extend */
            last->len += len;
            q->bytes += len;
            return;
        }
    }
    if (q->count == q->cap) bufq_grow(q);
    *seg_at(q, q->count) = (struct bufq_seg){chunk_ref(c), p, len};
    q->count++;
    q->bytes += len;
}

void bufq_push_copy(struct bufq *q, const void *p, size_t n)
{
    if (n == 0) return;
    if (!q->scratch || q->scratch->cap - q->scratch_used < n) {
        if (q->scratch) chunk_unref(q->scratch);
        q->scratch = chunk_new(n > BUF_CHUNK_SIZE ? n : BUF_CHUNK_SIZE);
        q->scratch_used = 0;
    }
    char *dst = q->scratch->data + q->scratch_used;
    memcpy(dst, p, n);
    q->scratch_used += n;
    bufq_push(q, q->scratch, dst, n);
}

void bufq_push_uint(struct bufq *q, uint64_t v, unsigned base)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[24]; /* 2^64 - 1 has 20 decimal digits */
    size_t i = sizeof tmp;
    do {
        tmp[--i] = digits[v % base];
        v /= base;
    } while (v);
    bufq_push_copy(q, tmp + i, sizeof tmp - i);
}

void bufq_push_str(struct bufq *q, const char *s) { bufq_push_copy(q, s, strlen(s)); }

void bufq_printf(struct bufq *q, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        bufq_push_copy(q, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) abort();
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    bufq_push_copy(q, big, (size_t)n);
    free(big);
}

int bufq_iov(const struct bufq *q, struct iovec *iov, int max)
{
    int n = 0;
    for (size_t i = 0; i < q->count && n < max; i++, n++) {
        const struct bufq_seg *s = seg_at(q, i);
        iov[n].iov_base = (void *)s->p;
        iov[n].iov_len = s->len;
    }
    return n;
}

void bufq_consume(struct bufq *q, size_t n, struct bufq *keep)
{
    while (n && q->count) {
        struct bufq_seg *s = seg_at(q, 0);
        size_t take = n < s->len ? n : s->len;
        if (keep) bufq_push(keep, s->c, s->p, take);
        s->p += take;
        s->len -= take;
        q->bytes -= take;
        n -= take;
        if (s->len == 0) {
            chunk_unref(s->c);
            q->head = (q->head + 1) % q->cap;
            q->count--;
        }
    }
    /* A drained queue gives its scratch back: an idle keep-alive connection
     * would otherwise keep the chunk its last response head was written to. */
    if (q->count == 0 && q->scratch) {
        chunk_unref(q->scratch);
        q->scratch = NULL;
        q->scratch_used = 0;
    }
}

void bufq_truncate(struct bufq *q, size_t len)
{
    while (q->bytes > len && q->count) {
        struct bufq_seg *s = seg_at(q, q->count - 1);
        size_t cut = q->bytes - len < s->len ? q->bytes - len : s->len;
        s->len -= cut;
        q->bytes -= cut;
        if (s->len == 0) {
            chunk_unref(s->c);
            q->count--;
        }
    }
}

void bufq_move(struct bufq *dst, struct bufq *src)
{
    for (size_t i = 0; i < src->count; i++) {
        struct bufq_seg *s = seg_at(src, i);
        bufq_push(dst, s->c, s->p, s->len);
    }
    struct chunk *scratch = src->scratch;
    src->scratch = NULL;
    bufq_clear(src);
    if (scratch) chunk_unref(scratch);
}

size_t ibuf_prepare(struct ibuf *b, size_t want, size_t max_cap)
{
    if (!b->c) {
        b->c = chunk_new(BUF_CHUNK_SIZE);
        b->rpos = b->wpos = 0;
    }
    size_t pending = b->wpos - b->rpos;
    if (pending == 0 && b->c->refs == 1) { /* nothing kept: reuse from the start */
        b->rpos = b->wpos = 0;
    }
    if (b->c->cap - b->wpos >= want) return b->c->cap - b->wpos;
    if (b->c->refs == 1 && pending + want <= b->c->cap) { /* unshared: compact in place */
        memmove(b->c->data, b->c->data + b->rpos, pending);
        b->rpos = 0;
        b->wpos = pending;
        return b->c->cap - pending;
    }
    size_t cap = BUF_CHUNK_SIZE;
    while (cap < pending + want && cap < max_cap) cap *= 2;
    if (cap > max_cap && max_cap >= BUF_CHUNK_SIZE) cap = max_cap;
    if (cap <= pending) return b->c->cap - b->wpos; /* cannot grow: caller sees a full head */
    struct chunk *n = chunk_new(cap);
    memcpy(n->data, b->c->data + b->rpos, pending);
    chunk_unref(b->c);
    b->c = n;
    b->rpos = 0;
    b->wpos = pending;
    return n->cap - pending;
}

void ibuf_free(struct ibuf *b)
{
    if (b->c) chunk_unref(b->c);
    b->c = NULL;
    b->rpos = b->wpos = 0;
}
