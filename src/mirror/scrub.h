/* scrub — applies a scrub policy to a mirror copy: header, cookie and query
 * actions plus detectors over the head; JSON paths, form fields and
 * detectors over a whole body (gzip/deflate inflated and re-deflated). It
 * fails closed: any error, unparseable body or budget overrun is -1 and the
 * caller drops the copy. It never sees the primary's bytes it does not get,
 * and it does not stream: the caller hands it a whole body. */
#ifndef UMBRA_SCRUB_H
#define UMBRA_SCRUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/strbuf.h"
#include "http/h1.h"
#include "http/message.h"

struct scrub_arena;

/** A scrubbed request head. out->req is the input head with the edited path,
 *  fields, forwarded_for and client_ip; its strings point into the input
 *  (unchanged parts) or into the private arena (new parts). */
struct scrub_head {
    struct http_request req;
    http_field fields[H1_MAX_HEADERS];
    struct scrub_arena *arena; /* private: new strings; freed by scrub_head_free */
};

/**
 * Applies policy p to the head of `in` (headers, cookies inside Cookie, query
 * string inside path, and detectors over header, cookie, path and query
 * values) into out (out->req is `in` with the edited path and fields; every
 * pointer stays valid until scrub_head_free, and as long as `in`'s strings
 * are). 0, or -1 to fail closed (out is then already freed). With the ipv4
 * detector or an x-forwarded-for action, client_ip is scrubbed too.
 */
int scrub_request_head(const struct cfg_scrub_policy *p, const struct http_request *in,
                       struct scrub_head *out);

/** Frees what scrub_request_head allocated; out->req must not be used after. */
void scrub_head_free(struct scrub_head *out);

/** True if p must see the body of `in` (json/form/detectors configured and a body present). */
bool scrub_wants_body(const struct cfg_scrub_policy *p, const struct http_request *in);

/**
 * Scrubs a whole body. content_type / content_encoding are the request's
 * values (empty if absent). Appends the new body to out (a strbuf). 0, or -1
 * (unparseable when on_unparseable is drop, unknown encoding, budget
 * exceeded, any error); on -1 out is as it was. The policy's budget applies.
 */
int scrub_body(const struct cfg_scrub_policy *p, struct h1_str content_type,
               struct h1_str content_encoding, const char *body, size_t len, struct strbuf *out);

/** scrub_body with an explicit time budget in microseconds (0 = the policy's). */
int scrub_body_budget(const struct cfg_scrub_policy *p, struct h1_str content_type,
                      struct h1_str content_encoding, const char *body, size_t len,
                      struct strbuf *out, uint64_t budget_us);

/** Frees this thread's scrub state (zlib streams, scratch) now. Optional: a
 *  thread's state is also freed when the thread ends. */
void scrub_thread_cleanup(void);

/** The pseudonym `hash` writes: hex of the first 16 bytes of HMAC-SHA256(key, v)
 *  (32 characters) into out[33], NUL-terminated. -1 if the MAC fails. */
int scrub_hmac_hex(const unsigned char *key, size_t key_len, const char *v, size_t n, char out[33]);

#endif
