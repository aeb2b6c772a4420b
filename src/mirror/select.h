/* select — decides whether one request is copied to one mirror: its match
 * rules (methods, excluded paths, header and cookie patterns, source CIDRs),
 * then its fraction, drawn at random or from a keyed hash of a header or
 * cookie so a given user is always or never mirrored. It reads the request;
 * it does not copy, count or log (mirror/shadow.c does). */
#ifndef UMBRA_SELECT_H
#define UMBRA_SELECT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/config.h"
#include "http/message.h"

enum select_result {
    SELECT_IN,          /* copy it */
    SELECT_SAMPLED_OUT, /* qualifies, but the fraction (or missing: skip) said no */
    SELECT_EXCLUDED,    /* a match rule says no */
};

/**
 * m's match rules and sampling for req. `random` is a fresh uniform 64-bit
 * value (used when sampling is random). `ppm` is the fraction in force
 * (runtime value). `client` is the peer's address (borrowed; NULL = unknown,
 * which matches no source_cidrs). A request whose sample_by value is missing
 * is drawn with `random`, or with missing: skip is SELECT_SAMPLED_OUT.
 */
enum select_result select_request(const struct cfg_mirror *m, const struct http_request *req,
                                  const struct sockaddr *client, uint64_t random, uint32_t ppm);

/**
 * The bucket (0..CFG_PPM-1) of a sample_by value: SipHash-2-4 under a fixed
 * key, so the same value lands in the same bucket in every process and every
 * version. A value is mirrored at fraction ppm iff bucket < ppm, so raising
 * the fraction only adds values.
 */
uint32_t select_bucket(const char *value, size_t len);

/** SipHash-2-4 of data under the 16-byte key k. */
uint64_t select_siphash(const unsigned char k[16], const void *data, size_t len);

/**
 * Finds cookie `name` (case-sensitive, len bytes) in the Cookie fields of
 * req; its value (borrowed from req) in *value. False if absent.
 */
bool select_cookie(const struct http_request *req, const char *name, size_t len,
                   struct h1_str *value);

/** True if `client` is inside one of the CIDRs (v4 rules match v4-mapped v6). */
bool select_cidr_match(const struct cfg_cidr *cidrs, size_t n, const struct sockaddr *client);

/** Frees this thread's regex match data now. Optional: it is also freed
 *  when the thread ends. */
void select_thread_cleanup(void);

#endif
