/* hsrv_h2_fuzz — libFuzzer target for hsrv's HTTP/2 glue (http/hsrv_h2.c):
 * the input follows the client preface into one codec, in two pieces, with
 * the output drained after each; the handler checks every request it gets.
 * Byte 0 is flags: 1 = a 1 ms delay_ms (the loop then runs until every held
 * answer went out), 2 = the handler asks to close, 4 = it adds extra and
 * connection-specific header lines. Byte 1 picks the split. The answers are
 * not judged; crashes, leaks and bad requests are. */
#include <ev.h>
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "http/hsrv.h"
#include "http/hsrv_h2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) abort();                                                                      \
    } while (0)

/* Small limits so 413 and 431 are reachable. */
static const struct hsrv_options opts = {
    .name = "fuzz",
    .max_head_bytes = 512,
    .max_body_bytes = 4096,
    .idle_timeout_ms = 1000,
    .max_connections = 1,
};

static void fuzz_handle(const struct hsrv_request *req, struct hsrv_response *resp, void *ctx)
{
    unsigned flags = *(const unsigned *)ctx;
    CHECK(req->method && req->target && strcmp(req->version, "HTTP/2.0") == 0);
    CHECK(req->body && req->body_len <= opts.max_body_bytes && req->body[req->body_len] == '\0');
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct hsrv_header *h = &req->headers[i];
        CHECK(h->name[h->name_len] == '\0' && h->value[h->value_len] == '\0');
        CHECK(h->name_len > 0 && h->name[0] != ':');
    }
    if (flags & 4) {
        strbuf_puts(&resp->headers,
                    "X-Mixed-Case:  v  \r\nConnection: close\r\nno-colon\r\n:x\r\n");
        hsrv_response_header(resp, "Transfer-Encoding", "chunked");
    }
    strbuf_append(&resp->body, req->body, req->body_len);
    resp->close = (flags & 2) != 0;
}

static void fuzz_drain(struct hsrv_h2 *h)
{
    const uint8_t *out;
    while (hsrv_h2_send(h, &out) > 0) {}
}

static struct hsrv_h2 *fuzz_codec;

static void fuzz_wake(void *arg) { fuzz_drain(fuzz_codec); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct ev_loop *loop;
    static struct log_ratelimit rl;
    if (!loop) {
        loop = ev_loop_new(EVFLAG_AUTO);
        log_set_level(LOG_ERROR);
    }
    if (size < 2) return 0;
    unsigned flags = data[0];
    size_t split = size > 2 ? data[1] % (size - 2) : 0;
    data += 2;
    size -= 2;
    struct hsrv_options o = opts;
    o.delay_ms = flags & 1;
    struct hsrv_h2_env env = {.loop = loop,
                              .opts = &o,
                              .handler = fuzz_handle,
                              .ctx = &flags,
                              .peer_text = "fuzz",
                              .rl = &rl,
                              .wake = fuzz_wake};
    struct hsrv_h2 *h = hsrv_h2_new(&env);
    CHECK(h);
    fuzz_codec = h;
    int rc = hsrv_h2_recv(h, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN);
    if (rc == 0) rc = hsrv_h2_recv(h, (const char *)data, split);
    fuzz_drain(h);
    if (rc == 0) rc = hsrv_h2_recv(h, (const char *)data + split, size - split);
    fuzz_drain(h);
    /* Only the codec's timer can be active: this returns once it is done. */
    if (rc == 0) ev_run(loop, 0);
    (void)hsrv_h2_finished(h, true);
    hsrv_h2_free(h);
    fuzz_codec = NULL;
    return 0;
}
