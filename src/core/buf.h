/* buf — reference-counted chunks and queues of chunk slices.
 *
 * Bytes read from a socket land in a chunk once; forwarding them (to the
 * primary, and later to a shadow) queues a slice that holds a reference, so
 * the same bytes can sit in several queues without a copy. A chunk belongs to
 * one worker thread: references are plain counters, not atomics. */
#ifndef UMBRA_BUF_H
#define UMBRA_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/** Capacity of a standard chunk; standard chunks are recycled per thread. */
#define BUF_CHUNK_SIZE 16384

struct chunk {
    uint32_t refs;
    uint32_t cap;
    struct chunk *next_free; /* freelist link while recycled */
    char data[];
};

/** A new chunk with at least `cap` bytes and one reference (the caller's).
 *  Standard-size requests come from the thread's freelist. Never NULL
 *  (aborts on allocation failure, like the rest of the process). */
struct chunk *chunk_new(size_t cap);
/** Takes one more reference. */
static inline struct chunk *chunk_ref(struct chunk *c)
{
    c->refs++;
    return c;
}
/** Drops one reference; the chunk is recycled or freed at zero. */
void chunk_unref(struct chunk *c);
/** Bytes held by all chunks alive on this thread (for stats). */
size_t chunk_thread_bytes(void);
/** Frees this thread's freelist (at thread exit). */
void chunk_thread_cleanup(void);

/** A slice [p, p+len) of chunk c; the slice holds one reference to c. */
struct bufq_seg {
    struct chunk *c;
    const char *p;
    size_t len;
};

/** A FIFO of slices, written out with writev. `bytes` is what it holds. */
struct bufq {
    struct bufq_seg *segs;
    size_t head, count, cap; /* ring */
    size_t bytes;
    struct chunk *scratch; /* where small copied bytes (framing) go */
    size_t scratch_used;
};

void bufq_init(struct bufq *q);
/** Drops every slice and the scratch chunk. */
void bufq_clear(struct bufq *q);
/** Queues a slice of c; takes a new reference to c (the caller keeps its own). */
void bufq_push(struct bufq *q, struct chunk *c, const char *p, size_t len);
/** Queues a copy of n bytes (small: framing, heads). */
void bufq_push_copy(struct bufq *q, const void *p, size_t n);
/** v in decimal (base 10) or lowercase hex (base 16), copied: the framing
 *  numbers every request and response carries, without printf's cost. */
void bufq_push_uint(struct bufq *q, uint64_t v, unsigned base);
/** A NUL-terminated string, copied. */
void bufq_push_str(struct bufq *q, const char *s);
/** printf into the queue (copied); for rare paths. */
void bufq_printf(struct bufq *q, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Fills up to max iovecs from the front; returns how many. */
int bufq_iov(const struct bufq *q, struct iovec *iov, int max);
/** Drops n bytes from the front. If keep is non-NULL the dropped slices are
 *  moved to it instead of released (a replay buffer). */
void bufq_consume(struct bufq *q, size_t n, struct bufq *keep);
/** Drops bytes from the back until q holds len (no more than it holds):
 *  takes back what was queued last and not yet written. */
void bufq_truncate(struct bufq *q, size_t len);
/** The i-th slice from the front (i < q->count). */
const struct bufq_seg *bufq_seg(const struct bufq *q, size_t i);
/** Appends all of src to dst (references move), leaving src empty. */
void bufq_move(struct bufq *dst, struct bufq *src);

/** An input buffer: a chunk being filled by reads, unconsumed bytes in
 *  [rpos, wpos). Consumed bytes may still be referenced by queued slices. */
struct ibuf {
    struct chunk *c;
    size_t rpos, wpos;
};

/** Makes room for a read of at least `want` bytes (less if max_cap forbids),
 *  moving unconsumed bytes to a fresh chunk when the current one is full or
 *  shared; the chunk grows past BUF_CHUNK_SIZE only up to max_cap, for long
 *  heads. Returns the free space at c->data + wpos (0 when the unconsumed
 *  bytes already fill max_cap). */
size_t ibuf_prepare(struct ibuf *b, size_t want, size_t max_cap);
/** Unconsumed bytes. */
static inline size_t ibuf_len(const struct ibuf *b) { return b->wpos - b->rpos; }
static inline const char *ibuf_data(const struct ibuf *b) { return b->c->data + b->rpos; }
/** Releases the chunk. */
void ibuf_free(struct ibuf *b);

#endif
