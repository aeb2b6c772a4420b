/* buf_test — chunks (references, per-thread recycling and its bound), slice
 * queues (push, contiguous extension, copies into scratch, iovecs, consume
 * with and without a keep queue, move, truncate, ring wrap-around) and ibuf_prepare
 * (reuse, compaction, fresh chunk when shared, growth for long heads, full).
 * Includes buf.c to look at the thread's freelist. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../src/core/buf.c"

/* Every test starts with an empty freelist and a zero live count, so the
 * counts it checks are exact (a failed test may have left chunks behind:
 * forget them rather than fail every later test too). */
static int setup(void **state)
{
    chunk_thread_cleanup();
    live_bytes = 0;
    return 0;
}

static int teardown(void **state)
{
    size_t live = chunk_thread_bytes();
    chunk_thread_cleanup();
    if (live) print_error("%zu bytes still referenced after the test\n", live);
    return live ? -1 : 0;
}

/* The queue's bytes, in order, as a NUL-terminated malloc'd string. */
static char *q_text(const struct bufq *q)
{
    struct iovec iov[256];
    int n = bufq_iov(q, iov, 256);
    assert_int_equal((size_t)n, q->count);
    char *s = malloc(q->bytes + 1);
    assert_non_null(s);
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        memcpy(s + len, iov[i].iov_base, iov[i].iov_len);
        len += iov[i].iov_len;
    }
    assert_int_equal(len, q->bytes);
    s[len] = '\0';
    return s;
}

static void assert_q_text(const struct bufq *q, const char *want)
{
    char *got = q_text(q);
    assert_string_equal(got, want);
    free(got);
}

/* A standard chunk holding `s` at its start. */
static struct chunk *chunk_with(const char *s)
{
    struct chunk *c = chunk_new(BUF_CHUNK_SIZE);
    memcpy(c->data, s, strlen(s));
    return c;
}

/* ---- chunks ---- */

static void test_chunk_new_standard(void **state)
{
    struct chunk *c = chunk_new(10);
    assert_int_equal(c->cap, BUF_CHUNK_SIZE);
    assert_int_equal(c->refs, 1);
    assert_int_equal(chunk_thread_bytes(), BUF_CHUNK_SIZE);
    struct chunk *big = chunk_new(BUF_CHUNK_SIZE * 3 + 1);
    assert_true(big->cap >= BUF_CHUNK_SIZE * 3 + 1);
    assert_int_equal(chunk_thread_bytes(), BUF_CHUNK_SIZE + big->cap);
    chunk_unref(big);
    chunk_unref(c);
    assert_int_equal(chunk_thread_bytes(), 0);
}

static void test_chunk_refs(void **state)
{
    struct chunk *c = chunk_new(BUF_CHUNK_SIZE);
    assert_ptr_equal(chunk_ref(c), c);
    chunk_ref(c);
    assert_int_equal(c->refs, 3);
    chunk_unref(c);
    chunk_unref(c);
    /* Still one holder: neither freed nor recycled. */
    assert_int_equal(c->refs, 1);
    assert_int_equal(freelist_len, 0);
    assert_int_equal(chunk_thread_bytes(), BUF_CHUNK_SIZE);
    c->data[0] = 'x'; /* ASan: still ours */
    chunk_unref(c);
    assert_int_equal(freelist_len, 1);
    assert_int_equal(chunk_thread_bytes(), 0);
}

static void test_chunk_recycled(void **state)
{
    struct chunk *a = chunk_new(BUF_CHUNK_SIZE);
    struct chunk *b = chunk_new(100);
    chunk_unref(a);
    chunk_unref(b);
    assert_int_equal(freelist_len, 2);
    /* Last in, first out; a recycled chunk comes back with one reference. */
    struct chunk *c = chunk_new(1);
    assert_ptr_equal(c, b);
    assert_int_equal(c->refs, 1);
    assert_null(c->next_free);
    assert_int_equal(freelist_len, 1);
    struct chunk *d = chunk_new(BUF_CHUNK_SIZE);
    assert_ptr_equal(d, a);
    assert_int_equal(freelist_len, 0);
    assert_int_equal(chunk_thread_bytes(), 2 * BUF_CHUNK_SIZE);
    chunk_unref(c);
    chunk_unref(d);
}

static void test_chunk_big_not_recycled(void **state)
{
    struct chunk *big = chunk_new(BUF_CHUNK_SIZE + 1);
    chunk_unref(big);
    assert_int_equal(freelist_len, 0);
    assert_int_equal(chunk_thread_bytes(), 0);
    /* And a big request never takes a small recycled chunk. */
    chunk_unref(chunk_new(BUF_CHUNK_SIZE));
    struct chunk *b2 = chunk_new(2 * BUF_CHUNK_SIZE);
    assert_true(b2->cap >= 2 * BUF_CHUNK_SIZE);
    assert_int_equal(freelist_len, 1);
    memset(b2->data, 'z', 2 * BUF_CHUNK_SIZE); /* ASan: really that big */
    chunk_unref(b2);
}

static void test_freelist_bounded(void **state)
{
    enum { N = FREELIST_MAX + 10 };
    struct chunk **cs = malloc(N * sizeof *cs);
    assert_non_null(cs);
    for (int i = 0; i < N; i++) cs[i] = chunk_new(BUF_CHUNK_SIZE);
    assert_int_equal(chunk_thread_bytes(), (size_t)N * BUF_CHUNK_SIZE);
    for (int i = 0; i < N; i++) chunk_unref(cs[i]);
    assert_int_equal(freelist_len, FREELIST_MAX);
    assert_int_equal(chunk_thread_bytes(), 0);
    free(cs);
    chunk_thread_cleanup();
    assert_int_equal(freelist_len, 0);
    assert_null(freelist);
}

/* ---- queues ---- */

static void test_push_takes_reference(void **state)
{
    struct chunk *c = chunk_with("hello world");
    struct bufq q;
    bufq_init(&q);
    bufq_push(&q, c, c->data, 5);
    assert_int_equal(c->refs, 2);
    assert_int_equal(q.count, 1);
    assert_int_equal(q.bytes, 5);
    bufq_push(&q, c, c->data, 0); /* empty: nothing queued, no reference */
    assert_int_equal(q.count, 1);
    assert_int_equal(c->refs, 2);
    chunk_unref(c); /* the reader lets go: the queue keeps the bytes alive */
    assert_int_equal(c->refs, 1);
    assert_q_text(&q, "hello");
    bufq_clear(&q);
    assert_int_equal(chunk_thread_bytes(), 0);
    assert_int_equal(q.count, 0);
    assert_int_equal(q.bytes, 0);
}

static void test_push_extends_contiguous(void **state)
{
    struct chunk *c = chunk_with("abcdefghij");
    struct chunk *d = chunk_with("0123456789");
    struct bufq q;
    bufq_init(&q);
    bufq_push(&q, c, c->data, 3);     /* abc */
    bufq_push(&q, c, c->data + 3, 2); /* de: right after, one slice */
    assert_int_equal(q.count, 1);
    assert_int_equal(c->refs, 2); /* one reference per slice, not per push */
    bufq_push(&q, c, c->data + 6, 2); /* gh: a gap, a new slice */
    assert_int_equal(q.count, 2);
    assert_int_equal(c->refs, 3);
    bufq_push(&q, d, d->data, 2);     /* 01: another chunk */
    bufq_push(&q, c, c->data + 8, 2); /* ij follows gh in memory, but d is last */
    assert_int_equal(q.count, 4);
    assert_int_equal(q.bytes, 11);
    assert_q_text(&q, "abcdegh01ij");
    bufq_clear(&q);
    assert_int_equal(c->refs, 1);
    assert_int_equal(d->refs, 1);
    chunk_unref(c);
    chunk_unref(d);
}

static void test_push_copy_scratch(void **state)
{
    struct bufq q;
    bufq_init(&q);
    char src[] = "GET / HTTP/1.1\r\n";
    bufq_push_copy(&q, src, strlen(src));
    src[0] = 'X'; /* a copy: later changes to the source do not show */
    bufq_push_copy(&q, "Host: a\r\n", 9);
    /* Consecutive copies land side by side in one scratch chunk: one slice. */
    assert_non_null(q.scratch);
    assert_int_equal(q.count, 1);
    assert_int_equal(q.scratch->refs, 2); /* the queue's scratch pointer + the slice */
    assert_int_equal(q.scratch_used, 16 + 9);
    assert_int_equal(chunk_thread_bytes(), BUF_CHUNK_SIZE);
    assert_q_text(&q, "GET / HTTP/1.1\r\nHost: a\r\n");
    bufq_push_copy(&q, "", 0);
    assert_int_equal(q.count, 1);
    bufq_clear(&q);
    assert_null(q.scratch);
}

static void test_push_copy_interleaved(void **state)
{
    struct chunk *body = chunk_with("BODY");
    struct bufq q;
    bufq_init(&q);
    bufq_push_copy(&q, "4\r\n", 3);
    bufq_push(&q, body, body->data, 4);
    bufq_push_copy(&q, "\r\n", 2);
    /* The second copy sits right after the first in scratch, but a body
     * slice came between: it must not be merged into the first slice. */
    assert_int_equal(q.count, 3);
    assert_q_text(&q, "4\r\nBODY\r\n");
    bufq_clear(&q);
    chunk_unref(body);
}

static void test_push_copy_new_scratch_when_full(void **state)
{
    struct bufq q;
    bufq_init(&q);
    char *fill = malloc(BUF_CHUNK_SIZE);
    assert_non_null(fill);
    memset(fill, 'a', BUF_CHUNK_SIZE);
    bufq_push_copy(&q, fill, BUF_CHUNK_SIZE - 3);
    struct chunk *first = q.scratch;
    bufq_push_copy(&q, "bcdef", 5); /* does not fit in the 3 bytes left */
    assert_ptr_not_equal(q.scratch, first);
    assert_int_equal(q.scratch_used, 5);
    /* The old scratch lives on through its slice only. */
    assert_int_equal(first->refs, 1);
    assert_int_equal(q.count, 2);
    assert_int_equal(q.bytes, BUF_CHUNK_SIZE + 2);
    assert_int_equal(chunk_thread_bytes(), 2 * BUF_CHUNK_SIZE);
    char *text = q_text(&q);
    assert_memory_equal(text, fill, BUF_CHUNK_SIZE - 3);
    assert_string_equal(text + BUF_CHUNK_SIZE - 3, "bcdef");
    free(text);
    /* Bigger than a chunk: a chunk of its own size. */
    char *huge = malloc(3 * BUF_CHUNK_SIZE);
    assert_non_null(huge);
    for (size_t i = 0; i < 3 * BUF_CHUNK_SIZE; i++) huge[i] = (char)('a' + i % 26);
    bufq_push_copy(&q, huge, 3 * BUF_CHUNK_SIZE);
    assert_true(q.scratch->cap >= 3 * BUF_CHUNK_SIZE);
    assert_int_equal(q.count, 3);
    struct iovec iov[4];
    assert_int_equal(bufq_iov(&q, iov, 4), 3);
    assert_int_equal(iov[2].iov_len, 3 * BUF_CHUNK_SIZE);
    assert_memory_equal(iov[2].iov_base, huge, 3 * BUF_CHUNK_SIZE);
    bufq_clear(&q);
    free(huge);
    free(fill);
}

static void test_printf(void **state)
{
    struct bufq q;
    bufq_init(&q);
    bufq_printf(&q, "%s: %d\r\n", "Content-Length", 42);
    assert_q_text(&q, "Content-Length: 42\r\n");
    /* Longer than the stack buffer inside bufq_printf. */
    char big[2000];
    memset(big, 'v', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    bufq_printf(&q, "X: %s\r\n", big);
    assert_int_equal(q.bytes, 20 + 3 + 1999 + 2);
    char *text = q_text(&q);
    assert_memory_equal(text + 20, "X: vvv", 6);
    assert_string_equal(text + 20 + 3 + 1999, "\r\n");
    free(text);
    bufq_clear(&q);
}

static void test_push_uint(void **state)
{
    static const struct {
        uint64_t v;
        unsigned base;
    } cases[] = {{0, 10}, {42, 10}, {UINT64_MAX, 10}, {0, 16}, {0x3fab, 16}, {UINT64_MAX, 16}};
    struct bufq q;
    bufq_init(&q);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bufq_push_uint(&q, cases[i].v, cases[i].base);
        bufq_push_str(&q, " ");
    }
    bufq_push_str(&q, "end");
    assert_q_text(&q, "0 42 18446744073709551615 0 3fab ffffffffffffffff end");
    /* Each is a copy: one contiguous slice of the scratch chunk. */
    assert_int_equal(q.count, 1);
    bufq_clear(&q);
}

static void test_iov_max(void **state)
{
    struct chunk *c = chunk_with("0123456789");
    struct bufq q;
    bufq_init(&q);
    for (int i = 0; i < 5; i++) bufq_push(&q, c, c->data + 2 * i, 1); /* 0 2 4 6 8 */
    struct iovec iov[8];
    assert_int_equal(bufq_iov(&q, iov, 3), 3);
    assert_ptr_equal(iov[0].iov_base, c->data);
    assert_ptr_equal(iov[2].iov_base, c->data + 4);
    assert_int_equal(iov[2].iov_len, 1);
    assert_int_equal(bufq_iov(&q, iov, 8), 5);
    assert_ptr_equal(iov[4].iov_base, c->data + 8);
    assert_int_equal(bufq_iov(&q, iov, 0), 0);
    struct bufq empty;
    bufq_init(&empty);
    assert_int_equal(bufq_iov(&empty, iov, 8), 0);
    bufq_clear(&q);
    chunk_unref(c);
}

static void test_consume_partial_and_whole(void **state)
{
    struct chunk *a = chunk_with("aaaa");
    struct chunk *b = chunk_with("bbbb");
    struct bufq q;
    bufq_init(&q);
    bufq_push(&q, a, a->data, 4);
    bufq_push(&q, b, b->data, 4);
    chunk_unref(a);
    chunk_unref(b); /* the queue holds the only references now */
    bufq_consume(&q, 1, NULL);
    assert_int_equal(q.bytes, 7);
    assert_int_equal(q.count, 2);
    assert_q_text(&q, "aaabbbb");
    size_t before = chunk_thread_bytes();
    bufq_consume(&q, 4, NULL); /* the rest of a and one byte of b */
    assert_int_equal(q.count, 1);
    assert_int_equal(q.bytes, 3);
    assert_int_equal(chunk_thread_bytes(), before - BUF_CHUNK_SIZE); /* a released */
    assert_int_equal(freelist_len, 1);
    assert_q_text(&q, "bbb");
    bufq_consume(&q, 100, NULL); /* more than held: empties, no underflow */
    assert_int_equal(q.count, 0);
    assert_int_equal(q.bytes, 0);
    assert_int_equal(chunk_thread_bytes(), 0);
    bufq_consume(&q, 5, NULL); /* on an empty queue: nothing */
    assert_int_equal(q.bytes, 0);
    bufq_clear(&q);
}

static void test_drained_queue_gives_back_scratch(void **state)
{
    struct bufq q;
    bufq_init(&q);
    bufq_push_copy(&q, "HTTP/1.1 200 OK\r\n\r\n", 19);
    assert_non_null(q.scratch);
    bufq_consume(&q, 10, NULL); /* part of it: the scratch stays for more heads */
    assert_non_null(q.scratch);
    assert_int_equal(chunk_thread_bytes(), BUF_CHUNK_SIZE);
    bufq_consume(&q, 9, NULL); /* drained: an idle connection holds no chunk */
    assert_null(q.scratch);
    assert_int_equal(q.scratch_used, 0);
    assert_int_equal(chunk_thread_bytes(), 0);
    bufq_push_copy(&q, "ok", 2); /* and a later head gets one again */
    assert_q_text(&q, "ok");
    bufq_clear(&q);
}

static void test_consume_into_keep(void **state)
{
    struct chunk *a = chunk_with("head|body");
    struct bufq q, keep;
    bufq_init(&q);
    bufq_init(&keep);
    bufq_push_copy(&q, "GET /", 5);
    bufq_push(&q, a, a->data, 9);
    chunk_unref(a);
    bufq_consume(&q, 3, &keep);
    bufq_consume(&q, 4, &keep); /* across the slice boundary */
    assert_q_text(&keep, "GET /he");
    assert_q_text(&q, "ad|body");
    /* The kept bytes are references, not copies: a is held by both queues. */
    assert_int_equal(a->refs, 2);
    assert_int_equal(keep.count, 2); /* "GET" + " /" merged, then "he" */
    bufq_consume(&q, q.bytes, &keep);
    assert_int_equal(q.bytes, 0);
    assert_q_text(&keep, "GET /head|body");
    assert_int_equal(keep.count, 2); /* contiguous pieces of a merged */
    assert_int_equal(a->refs, 1);    /* q let go, keep holds it */
    assert_null(keep.scratch);       /* keep copied nothing */
    bufq_clear(&q);                  /* q's scratch goes; keep's slice holds it */
    assert_q_text(&keep, "GET /head|body");
    bufq_clear(&keep);
    assert_int_equal(chunk_thread_bytes(), 0);
}

static void test_ring_wraps(void **state)
{
    struct chunk *c = chunk_new(BUF_CHUNK_SIZE);
    for (int i = 0; i < 64; i++) c->data[2 * i] = (char)('A' + i % 26);
    struct bufq q;
    bufq_init(&q);
    char want[64] = "";
    size_t wn = 0;
    int next = 0;
    /* Non-contiguous one-byte slices: each is its own ring slot. */
    for (; next < 6; next++) bufq_push(&q, c, c->data + 2 * next, 1);
    bufq_consume(&q, 5, NULL);
    want[wn++] = c->data[10];
    assert_int_equal(q.cap, 8);
    for (; next < 20; next++) { /* wraps the 8-slot ring, then grows it */
        bufq_push(&q, c, c->data + 2 * next, 1);
        want[wn++] = c->data[2 * next];
    }
    assert_true(q.cap >= 15);
    assert_int_equal(q.count, 15);
    assert_q_text(&q, want);
    assert_int_equal(c->refs, 16);
    bufq_clear(&q);
    assert_int_equal(c->refs, 1);
    chunk_unref(c);
}

static void test_move(void **state)
{
    struct chunk *c = chunk_with("0123456789");
    struct bufq dst, src;
    bufq_init(&dst);
    bufq_init(&src);
    bufq_push(&dst, c, c->data, 3);
    bufq_push(&src, c, c->data + 3, 3); /* continues dst's last slice */
    bufq_push_copy(&src, "xyz", 3);
    assert_int_equal(c->refs, 3);
    bufq_move(&dst, &src);
    assert_q_text(&dst, "012345xyz");
    assert_int_equal(dst.count, 2); /* 012+345 merged, then xyz */
    assert_int_equal(dst.bytes, 9);
    assert_int_equal(src.count, 0);
    assert_int_equal(src.bytes, 0);
    assert_null(src.scratch);
    assert_int_equal(c->refs, 2); /* the merged slice's one reference + ours */
    /* src stays usable, and dst's own copies are unaffected. */
    bufq_push_copy(&src, "again", 5);
    assert_q_text(&src, "again");
    bufq_push_copy(&dst, "!", 1);
    assert_q_text(&dst, "012345xyz!");
    bufq_clear(&src);
    bufq_clear(&dst);
    assert_int_equal(c->refs, 1);
    chunk_unref(c);
}

static void test_move_empty(void **state)
{
    struct bufq dst, src;
    bufq_init(&dst);
    bufq_init(&src);
    bufq_move(&dst, &src);
    assert_int_equal(dst.bytes, 0);
    bufq_push_copy(&dst, "a", 1);
    bufq_move(&dst, &src);
    assert_q_text(&dst, "a");
    bufq_clear(&dst);
}

static void test_truncate(void **state)
{
    struct chunk *c = chunk_with("0123456789");
    struct bufq q;
    bufq_init(&q);
    bufq_push(&q, c, c->data, 4);
    bufq_push_copy(&q, "ab", 2);
    bufq_push(&q, c, c->data + 6, 4);
    assert_int_equal(c->refs, 3);
    bufq_truncate(&q, 20); /* more than it holds: nothing happens */
    assert_q_text(&q, "0123ab6789");
    bufq_truncate(&q, 5); /* the last slice whole, then into the copied one */
    assert_q_text(&q, "0123a");
    assert_int_equal(q.count, 2);
    assert_int_equal(c->refs, 2);
    /* Copies after a cut do not run into the bytes that were dropped. */
    bufq_push_copy(&q, "XY", 2);
    assert_q_text(&q, "0123aXY");
    bufq_consume(&q, 2, NULL); /* the ring's head moves: truncation still works from the back */
    bufq_truncate(&q, 2);
    assert_q_text(&q, "23");
    bufq_truncate(&q, 0);
    assert_int_equal(q.bytes, 0);
    assert_int_equal(q.count, 0);
    assert_int_equal(c->refs, 1);
    bufq_push(&q, c, c->data + 9, 1);
    assert_q_text(&q, "9");
    bufq_clear(&q);
    chunk_unref(c);
}

/* ---- ibuf ---- */

/* Appends s as if read from a socket (room must have been prepared). */
static void ibuf_fill(struct ibuf *b, const char *s, size_t n)
{
    assert_true(b->c->cap - b->wpos >= n);
    memcpy(b->c->data + b->wpos, s, n);
    b->wpos += n;
}

static void test_ibuf_first_prepare(void **state)
{
    struct ibuf b = {0};
    assert_int_equal(ibuf_prepare(&b, 1, 65536), BUF_CHUNK_SIZE);
    assert_non_null(b.c);
    assert_int_equal(b.c->refs, 1);
    assert_int_equal(ibuf_len(&b), 0);
    ibuf_free(&b);
    assert_null(b.c);
    ibuf_free(&b); /* twice is harmless */
}

static void test_ibuf_reuse_when_consumed(void **state)
{
    struct ibuf b = {0};
    ibuf_prepare(&b, 4096, 65536);
    struct chunk *c = b.c;
    ibuf_fill(&b, "GET / HTTP/1.1\r\n\r\n", 18);
    b.rpos = b.wpos; /* all parsed, nothing referenced elsewhere */
    assert_int_equal(ibuf_prepare(&b, 4096, 65536), BUF_CHUNK_SIZE);
    assert_ptr_equal(b.c, c);
    assert_int_equal(b.rpos, 0);
    assert_int_equal(b.wpos, 0);
    ibuf_free(&b);
}

static void test_ibuf_consumed_but_shared_not_reused(void **state)
{
    struct ibuf b = {0};
    struct bufq q;
    bufq_init(&q);
    ibuf_prepare(&b, 4096, 65536);
    ibuf_fill(&b, "body", 4);
    bufq_push(&q, b.c, ibuf_data(&b), 4); /* forwarded, not yet written */
    b.rpos = b.wpos;
    /* Rewinding would overwrite the queued bytes on the next read. */
    assert_int_equal(ibuf_prepare(&b, 4096, 65536), BUF_CHUNK_SIZE - 4);
    assert_int_equal(b.wpos, 4);
    ibuf_fill(&b, "next", 4);
    assert_q_text(&q, "body");
    bufq_clear(&q);
    ibuf_free(&b);
}

static void test_ibuf_compacts_unshared(void **state)
{
    struct ibuf b = {0};
    ibuf_prepare(&b, 1, 65536);
    struct chunk *c = b.c;
    char *fill = malloc(BUF_CHUNK_SIZE);
    assert_non_null(fill);
    memset(fill, '.', BUF_CHUNK_SIZE);
    memcpy(fill + BUF_CHUNK_SIZE - 10, "GET /parti", 10);
    ibuf_fill(&b, fill, BUF_CHUNK_SIZE - 100);
    ibuf_fill(&b, fill + BUF_CHUNK_SIZE - 100, 100); /* the chunk is full */
    b.rpos = BUF_CHUNK_SIZE - 10;                     /* a partial head remains */
    size_t room = ibuf_prepare(&b, 4096, 65536);
    assert_ptr_equal(b.c, c); /* moved in place, no new chunk */
    assert_int_equal(room, BUF_CHUNK_SIZE - 10);
    assert_int_equal(b.rpos, 0);
    assert_int_equal(b.wpos, 10);
    assert_memory_equal(ibuf_data(&b), "GET /parti", 10);
    assert_int_equal(chunk_thread_bytes(), BUF_CHUNK_SIZE);
    free(fill);
    ibuf_free(&b);
}

static void test_ibuf_new_chunk_when_shared(void **state)
{
    struct ibuf b = {0};
    struct bufq q;
    bufq_init(&q);
    ibuf_prepare(&b, 1, 65536);
    struct chunk *old = b.c;
    char *fill = malloc(BUF_CHUNK_SIZE);
    assert_non_null(fill);
    memset(fill, 'b', BUF_CHUNK_SIZE);
    memcpy(fill + BUF_CHUNK_SIZE - 6, "tail!!", 6);
    ibuf_fill(&b, fill, BUF_CHUNK_SIZE);
    bufq_push(&q, old, old->data, BUF_CHUNK_SIZE - 6); /* queued for an upstream */
    b.rpos = BUF_CHUNK_SIZE - 6;
    size_t room = ibuf_prepare(&b, 4096, 65536);
    assert_ptr_not_equal(b.c, old);
    assert_int_equal(room, BUF_CHUNK_SIZE - 6);
    assert_int_equal(b.rpos, 0);
    assert_int_equal(b.wpos, 6);
    assert_memory_equal(ibuf_data(&b), "tail!!", 6);
    /* The queued slice still reads the old bytes; ibuf dropped its reference. */
    assert_int_equal(old->refs, 1);
    char *text = q_text(&q);
    assert_memory_equal(text, fill, BUF_CHUNK_SIZE - 6);
    free(text);
    bufq_clear(&q);
    assert_int_equal(chunk_thread_bytes(), BUF_CHUNK_SIZE);
    free(fill);
    ibuf_free(&b);
}

static void test_ibuf_grows_for_long_head(void **state)
{
    enum { MAX = 4 * BUF_CHUNK_SIZE };
    char *head = malloc(MAX);
    assert_non_null(head);
    for (size_t i = 0; i < MAX; i++) head[i] = (char)('a' + i % 23);
    struct ibuf b = {0};
    size_t room = ibuf_prepare(&b, 1, MAX);
    size_t have = 0;
    /* Nothing consumed (the head is incomplete): the chunk doubles each time. */
    size_t caps[] = {BUF_CHUNK_SIZE, 2 * BUF_CHUNK_SIZE, 4 * BUF_CHUNK_SIZE};
    for (int step = 0; step < 3; step++) {
        assert_int_equal(b.c->cap, caps[step]);
        assert_int_equal(room, caps[step] - have);
        ibuf_fill(&b, head + have, room);
        have += room;
        room = ibuf_prepare(&b, 1024, MAX);
        assert_int_equal(ibuf_len(&b), have);
        assert_memory_equal(ibuf_data(&b), head, have);
    }
    /* At max_cap and full: no room, the chunk kept. */
    assert_int_equal(room, 0);
    assert_int_equal(b.c->cap, MAX);
    assert_int_equal(ibuf_prepare(&b, 1, MAX), 0);
    assert_memory_equal(ibuf_data(&b), head, MAX);
    free(head);
    ibuf_free(&b);
}

static void test_ibuf_growth_capped_at_max(void **state)
{
    enum { MAX = BUF_CHUNK_SIZE + 5000 }; /* not a power of two */
    char *head = malloc(MAX);
    assert_non_null(head);
    memset(head, 'h', MAX);
    struct ibuf b = {0};
    ibuf_prepare(&b, 1, MAX);
    ibuf_fill(&b, head, BUF_CHUNK_SIZE);
    size_t room = ibuf_prepare(&b, 8192, MAX);
    assert_int_equal(b.c->cap, MAX);
    assert_int_equal(room, 5000); /* less than asked for: max_cap forbids more */
    ibuf_fill(&b, head, room);
    assert_int_equal(ibuf_prepare(&b, 1, MAX), 0);
    free(head);
    ibuf_free(&b);
}

static void test_ibuf_full_at_standard_size(void **state)
{
    /* max_cap below a chunk: a full standard chunk is as big as it gets. */
    char *fill = malloc(BUF_CHUNK_SIZE);
    assert_non_null(fill);
    memset(fill, 'f', BUF_CHUNK_SIZE);
    struct ibuf b = {0};
    ibuf_prepare(&b, 1, 8192);
    ibuf_fill(&b, fill, BUF_CHUNK_SIZE);
    assert_int_equal(ibuf_prepare(&b, 1, 8192), 0);
    assert_int_equal(b.c->cap, BUF_CHUNK_SIZE);
    assert_int_equal(ibuf_prepare(&b, 1, BUF_CHUNK_SIZE), 0);
    free(fill);
    ibuf_free(&b);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_chunk_new_standard),
        T(test_chunk_refs),
        T(test_chunk_recycled),
        T(test_chunk_big_not_recycled),
        T(test_freelist_bounded),
        T(test_push_takes_reference),
        T(test_push_extends_contiguous),
        T(test_push_copy_scratch),
        T(test_push_copy_interleaved),
        T(test_push_copy_new_scratch_when_full),
        T(test_printf),
        T(test_push_uint),
        T(test_iov_max),
        T(test_consume_partial_and_whole),
        T(test_drained_queue_gives_back_scratch),
        T(test_consume_into_keep),
        T(test_ring_wraps),
        T(test_move),
        T(test_move_empty),
        T(test_truncate),
        T(test_ibuf_first_prepare),
        T(test_ibuf_reuse_when_consumed),
        T(test_ibuf_consumed_but_shared_not_reused),
        T(test_ibuf_compacts_unshared),
        T(test_ibuf_new_chunk_when_shared),
        T(test_ibuf_grows_for_long_head),
        T(test_ibuf_growth_capped_at_max),
        T(test_ibuf_full_at_standard_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
