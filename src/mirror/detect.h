/* detect — finds secrets and PII in text by shape: e-mail addresses, card
 * numbers (Luhn), JWTs, bearer tokens, US SSNs and IPv4 addresses. It scans
 * bytes it is given; it does not decode JSON, forms or percent-encoding (the
 * scrubber does that first) and it never allocates. */
#ifndef UMBRA_DETECT_H
#define UMBRA_DETECT_H

#include <stdbool.h>
#include <stddef.h>

#include "core/strbuf.h"

/** Detector bits, combined in cfg_scrub_policy.detectors. */
enum detect_kind {
    DETECT_EMAIL = 1u << 0,        /* RFC 5322 dot-atom@domain, alphabetic TLD */
    DETECT_CREDIT_CARD = 1u << 1,  /* 13-19 digits (groups of 3+ split by " " or "-"), Luhn */
    DETECT_JWT = 1u << 2,          /* base64url.base64url.base64url?, header decodes to "{" */
    DETECT_BEARER_TOKEN = 1u << 3, /* "Bearer <token68>": the token part */
    DETECT_US_SSN = 1u << 4,       /* ddd-dd-dddd without area 000/666/9xx, group 00, serial 0000 */
    DETECT_IPV4 = 1u << 5,         /* four decimal octets 0-255, no leading zeros */
};

/** Every detector. */
#define DETECT_ALL 0x3fu

/** What the policy writes in place of a secret. */
#define DETECT_MASK "MASKED"
#define DETECT_MASK_LEN 6

/** A found secret: s[off .. off+len). */
struct detect_span {
    size_t off, len;
    unsigned kind; /* one DETECT_* bit */
};

/** The bit for a detector's config name ("email", "credit_card", "jwt",
 *  "bearer_token", "us_ssn", "ipv4"), or 0 if unknown. */
unsigned detect_from_name(const char *name);

/** The config name of one DETECT_* bit ("?" for anything else). */
const char *detect_name(unsigned kind);

/**
 * Finds the leftmost secret of a kind in `mask` that starts at or after
 * `from` in s[0..n). Matches are whole tokens: they never start or end in
 * the middle of a word or number. Returns false if there is none.
 */
bool detect_next(unsigned mask, const char *s, size_t n, size_t from, struct detect_span *out);

/** True if s[0..n) holds any secret of a kind in `mask`. */
bool detect_any(unsigned mask, const char *s, size_t n);

/**
 * Appends s[0..n) to out with every secret of a kind in `mask` replaced by
 * DETECT_MASK. Returns how many were replaced (0: out got s unchanged).
 */
size_t detect_mask(unsigned mask, const char *s, size_t n, struct strbuf *out);

/** Luhn checksum over the decimal digits of s[0..n) (other bytes skipped). */
bool detect_luhn(const char *s, size_t n);

#endif
