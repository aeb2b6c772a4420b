/* detect — secrets and PII found by shape, one left-to-right pass.
 *
 * Every detector is anchored at a token start (a position whose left
 * neighbour cannot continue the token), so the scan tries each start once and
 * skips the rest of an alphanumeric run: linear in the input. Precision comes
 * from checks that random text rarely passes (Luhn, JWT header decoding to
 * "{", SSN ranges, octet ranges, an alphabetic TLD). */
#include "mirror/detect.h"

#include <stdint.h>
#include <string.h>

#define EMAIL_LOCAL_MAX 64
#define EMAIL_DOMAIN_MAX 253
#define EMAIL_LABEL_MAX 63
#define CARD_MIN 13
#define CARD_MAX 19
#define CARD_GROUP_MIN 3    /* separated digits come in groups of 3 or more */
#define BEARER_MIN 8        /* shorter "tokens" are words: "bearer of" */
#define BEARER_PLAIN_MIN 20 /* a token of letters only must be at least this long */
#define JWT_HEADER_DECODE 1536

struct name_bit {
    const char *name;
    unsigned bit;
};

static const struct name_bit names[] = {
    {"email", DETECT_EMAIL},   {"credit_card", DETECT_CREDIT_CARD},
    {"jwt", DETECT_JWT},       {"bearer_token", DETECT_BEARER_TOKEN},
    {"us_ssn", DETECT_US_SSN}, {"ipv4", DETECT_IPV4},
};

unsigned detect_from_name(const char *name)
{
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i].name)) return names[i].bit;
    return 0;
}

const char *detect_name(unsigned kind)
{
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (kind == names[i].bit) return names[i].name;
    return "?";
}

/* ---- character classes ------------------------------------------------- */

static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static bool is_alpha(unsigned char c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
static bool is_alnum(unsigned char c) { return is_digit(c) || is_alpha(c); }

/* RFC 5322 atext. */
static bool is_atext(unsigned char c)
{
    return is_alnum(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

static bool is_b64url(unsigned char c) { return is_alnum(c) || c == '-' || c == '_'; }

/* RFC 9110 token68 without its trailing "=". */
static bool is_token68(unsigned char c) { return is_alnum(c) || (c && strchr("-._~+/", c)); }

static unsigned char at(const char *s, size_t n, size_t i)
{
    return i < n ? (unsigned char)s[i] : 0;
}

/* ---- Luhn and cards ------------------------------------------------------ */

bool detect_luhn(const char *s, size_t n)
{
    unsigned sum = 0, ndigits = 0;
    for (size_t k = n; k-- > 0;) {
        unsigned char c = (unsigned char)s[k];
        if (!is_digit(c)) continue;
        unsigned d = c - '0';
        if (ndigits++ & 1) d = d * 2 > 9 ? d * 2 - 9 : d * 2;
        sum += d;
    }
    return ndigits > 0 && sum % 10 == 0;
}

/* A number ends here unless a letter, digit or ".digit" (a decimal) follows. */
static bool number_ends(const char *s, size_t n, size_t e)
{
    unsigned char c = at(s, n, e);
    if (is_alnum(c)) return false;
    return !(c == '.' && is_digit(at(s, n, e + 1)));
}

/* 13-19 digits from i, as one run or groups of 3+ split by single spaces or
 * dashes, passing Luhn; the longest such prefix of groups. 0 if none. */
static size_t try_card(const char *s, size_t n, size_t i)
{
    size_t pos = i, digits = 0, groups = 0, best = 0;
    if (s[i] == '0') return 0; /* no issuer number starts with 0 */
    for (;;) {
        size_t g = pos;
        while (pos < n && is_digit((unsigned char)s[pos]) && digits <= CARD_MAX) pos++, digits++;
        size_t glen = pos - g;
        if (digits > CARD_MAX) break;
        if (groups++ > 0 && glen < CARD_GROUP_MIN) break; /* "1 2 3 ...": a list */
        if (digits >= CARD_MIN && number_ends(s, n, pos) && detect_luhn(s + i, pos - i)) best = pos;
        unsigned char sep = at(s, n, pos);
        if ((sep != ' ' && sep != '-') || !is_digit(at(s, n, pos + 1))) break;
        if (glen < CARD_GROUP_MIN) break;
        pos++;
    }
    return best ? best - i : 0;
}

/* ---- SSN and IPv4 -------------------------------------------------------- */

static unsigned digits_val(const char *s, size_t k)
{
    unsigned v = 0;
    for (size_t j = 0; j < k; j++) v = v * 10 + (unsigned)(s[j] - '0');
    return v;
}

static bool all_digits(const char *s, size_t k)
{
    for (size_t j = 0; j < k; j++)
        if (!is_digit((unsigned char)s[j])) return false;
    return true;
}

/* ddd-dd-dddd outside the ranges the SSA never issues. */
static size_t try_ssn(const char *s, size_t n, size_t i)
{
    if (n - i < 11) return 0;
    const char *p = s + i;
    if (!all_digits(p, 3) || p[3] != '-' || !all_digits(p + 4, 2) || p[6] != '-' ||
        !all_digits(p + 7, 4))
        return 0;
    unsigned char next = at(s, n, i + 11);
    if (is_alnum(next) || next == '-') return 0;
    unsigned area = digits_val(p, 3), group = digits_val(p + 4, 2), serial = digits_val(p + 7, 4);
    if (area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0) return 0;
    return 11;
}

/* One octet 0-255 without leading zeros; its length, 0 if none. */
static size_t octet(const char *s, size_t n, size_t i)
{
    size_t k = 0;
    while (k < 3 && is_digit(at(s, n, i + k))) k++;
    if (k == 0 || is_digit(at(s, n, i + k))) return 0;
    if (k > 1 && s[i] == '0') return 0;
    return digits_val(s + i, k) <= 255 ? k : 0;
}

static size_t try_ipv4(const char *s, size_t n, size_t i)
{
    size_t pos = i;
    for (int o = 0; o < 4; o++) {
        if (o > 0) {
            if (at(s, n, pos) != '.') return 0;
            pos++;
        }
        size_t k = octet(s, n, pos);
        if (!k) return 0;
        pos += k;
    }
    /* "1.2.3.4.5" is a version, "1.2.3.4a" a word: neither is an address. */
    unsigned char next = at(s, n, pos);
    if (is_alnum(next) || (next == '.' && is_alnum(at(s, n, pos + 1)))) return 0;
    return pos - i;
}

/* ---- JWT ----------------------------------------------------------------- */

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (is_digit(c)) return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

/* Decodes up to `cap` bytes of unpadded base64url; returns the count. */
static size_t b64url_decode(const char *s, size_t n, unsigned char *out, size_t cap)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    for (size_t k = 0; k < n && o < cap; k++) {
        acc = (acc << 6) | (uint32_t)b64url_val((unsigned char)s[k]);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return o;
}

static bool json_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* A JOSE header: base64url of a JSON object (first byte "{", and when it is
 * short enough to decode whole, last non-space byte "}"). */
static bool jwt_header_ok(const char *h, size_t n)
{
    unsigned char buf[JWT_HEADER_DECODE];
    if (n < 2 || n % 4 == 1) return false;
    size_t len = b64url_decode(h, n, buf, sizeof buf);
    if (len == 0 || buf[0] != '{') return false;
    if (n / 4 * 3 + 2 > sizeof buf) return true; /* too long to check the end */
    while (len > 0 && json_space(buf[len - 1])) len--;
    return len > 0 && buf[len - 1] == '}';
}

static size_t b64url_run(const char *s, size_t n, size_t i)
{
    size_t k = i;
    while (k < n && is_b64url((unsigned char)s[k])) k++;
    return k - i;
}

static size_t try_jwt(const char *s, size_t n, size_t i)
{
    size_t h = b64url_run(s, n, i);
    if (at(s, n, i + h) != '.') return 0;
    size_t p0 = i + h + 1, p = b64url_run(s, n, p0);
    if (p < 2 || p % 4 == 1 || at(s, n, p0 + p) != '.') return 0;
    size_t s0 = p0 + p + 1, sig = b64url_run(s, n, s0);
    if (sig % 4 == 1) return 0;
    unsigned char next = at(s, n, s0 + sig);
    if (next == '.' && is_b64url(at(s, n, s0 + sig + 1))) return 0; /* four parts: not a JWS */
    if (!jwt_header_ok(s + i, h)) return 0;
    return s0 + sig - i;
}

/* ---- bearer tokens -------------------------------------------------------- */

/* "Bearer" SP+ token68: the span of the token, from *start. */
static size_t try_bearer(const char *s, size_t n, size_t i, size_t *start)
{
    static const char word[] = "bearer";
    size_t k = 0;
    for (; k < 6; k++)
        if ((at(s, n, i + k) | 0x20) != (unsigned char)word[k]) return 0;
    size_t t = i + 6;
    while (at(s, n, t) == ' ' || at(s, n, t) == '\t') t++;
    if (t == i + 6) return 0;
    size_t e = t;
    bool symbol = false;
    while (e < n && is_token68((unsigned char)s[e])) {
        symbol |= !is_alpha((unsigned char)s[e]);
        e++;
    }
    size_t len = e - t;
    while (e < n && s[e] == '=') e++, symbol = true;
    if (len < BEARER_MIN || (!symbol && len < BEARER_PLAIN_MIN)) return 0;
    if (is_alnum(at(s, n, e))) return 0;
    *start = t;
    return e - t;
}

/* ---- e-mail ---------------------------------------------------------------- */

/* Labels of letters, digits and inner hyphens; the domain ends after the last
 * label that can be a TLD (2+ letters) once there are at least two labels. */
static size_t email_domain(const char *s, size_t n, size_t d)
{
    size_t k = d, good = 0, nlabels = 0;
    for (;;) {
        size_t l = k;
        bool alpha = true;
        while (k < n && (is_alnum((unsigned char)s[k]) || s[k] == '-')) {
            alpha &= is_alpha((unsigned char)s[k]);
            k++;
        }
        size_t len = k - l;
        if (len == 0 || len > EMAIL_LABEL_MAX || s[l] == '-' || s[k - 1] == '-') break;
        if (k - d > EMAIL_DOMAIN_MAX) break;
        if (++nlabels >= 2 && alpha && len >= 2) good = k;
        if (at(s, n, k) != '.' || !is_alnum(at(s, n, k + 1))) break;
        k++;
    }
    return good ? good - d : 0;
}

/* A dot-atom local part ending right before "@" somewhere after i; the span
 * of the whole address from *start, or 0. */
static size_t try_email(const char *s, size_t n, size_t i, size_t *start)
{
    size_t j = i;
    while (j < n && (is_atext((unsigned char)s[j]) || s[j] == '.')) j++;
    if (at(s, n, j) != '@' || j == i || s[j - 1] == '.') return 0;
    size_t ls = i;
    for (size_t k = i; k + 1 < j; k++)
        if (s[k] == '.' && s[k + 1] == '.') ls = k + 2;
    if (j - ls > EMAIL_LOCAL_MAX) ls = j - EMAIL_LOCAL_MAX;
    while (ls < j && s[ls] == '.') ls++;
    if (ls == j) return 0;
    size_t dlen = email_domain(s, n, j + 1);
    if (!dlen) return 0;
    *start = ls;
    return j + 1 + dlen - ls;
}

/* ---- the scan ---------------------------------------------------------------- */

/* Keeps the candidate that starts first, then the longest. */
static void consider(struct detect_span *best, bool *found, size_t off, size_t len, unsigned kind)
{
    if (!len) return;
    if (!*found || off < best->off || (off == best->off && len > best->len)) {
        *best = (struct detect_span){off, len, kind};
        *found = true;
    }
}

/* Every detector that may start a token at i (s[i] alphanumeric, s[i-1] not). */
static bool try_word(unsigned mask, const char *s, size_t n, size_t i, struct detect_span *out)
{
    unsigned char c = (unsigned char)s[i], prev = i ? (unsigned char)s[i - 1] : 0;
    bool found = false;
    size_t st = 0, len;
    if (is_digit(c)) {
        bool decimal = prev == '.' && i >= 2 && is_digit((unsigned char)s[i - 2]);
        if ((mask & DETECT_CREDIT_CARD) && !decimal)
            consider(out, &found, i, try_card(s, n, i), DETECT_CREDIT_CARD);
        if ((mask & DETECT_US_SSN) && prev != '-')
            consider(out, &found, i, try_ssn(s, n, i), DETECT_US_SSN);
        if ((mask & DETECT_IPV4) && prev != '.')
            consider(out, &found, i, try_ipv4(s, n, i), DETECT_IPV4);
    }
    if ((mask & DETECT_JWT) && c == 'e' && prev != '-' && prev != '_' && prev != '.')
        consider(out, &found, i, try_jwt(s, n, i), DETECT_JWT);
    if ((mask & DETECT_BEARER_TOKEN) && (c | 0x20) == 'b' && (len = try_bearer(s, n, i, &st)))
        consider(out, &found, st, len, DETECT_BEARER_TOKEN);
    if ((mask & DETECT_EMAIL) && !is_atext(prev) && prev != '.' && (len = try_email(s, n, i, &st)))
        consider(out, &found, st, len, DETECT_EMAIL);
    return found;
}

bool detect_next(unsigned mask, const char *s, size_t n, size_t from, struct detect_span *out)
{
    size_t i = from;
    mask &= DETECT_ALL;
    if (!mask) return false;
    while (i < n) {
        unsigned char c = (unsigned char)s[i], prev = i ? (unsigned char)s[i - 1] : 0;
        if (is_alnum(c)) {
            if (!is_alnum(prev) && try_word(mask, s, n, i, out)) return true;
            while (i < n && is_alnum((unsigned char)s[i])) i++;
            continue;
        }
        size_t st, len;
        if ((mask & DETECT_EMAIL) && is_atext(c) && !is_atext(prev) && prev != '.' &&
            (len = try_email(s, n, i, &st))) {
            *out = (struct detect_span){st, len, DETECT_EMAIL};
            return true;
        }
        i++;
    }
    return false;
}

bool detect_any(unsigned mask, const char *s, size_t n)
{
    struct detect_span sp;
    return detect_next(mask, s, n, 0, &sp);
}

size_t detect_mask(unsigned mask, const char *s, size_t n, struct strbuf *out)
{
    struct detect_span sp;
    size_t pos = 0, count = 0;
    while (detect_next(mask, s, n, pos, &sp)) {
        strbuf_append(out, s + pos, sp.off - pos);
        strbuf_append(out, DETECT_MASK, DETECT_MASK_LEN);
        pos = sp.off + sp.len;
        count++;
    }
    strbuf_append(out, s + pos, n - pos);
    return count;
}
