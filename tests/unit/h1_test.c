/* h1_test — every rejection rule and accepted edge case of the HTTP/1.1
 * parser and chunked decoder, plus incremental feeding (byte by byte and in
 * random splits). Includes h1.c to check the character-class table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../src/http/h1.c"

static const struct h1_limits lim = {.max_head_bytes = 8192, .max_target_bytes = 1024};
static struct h1_request R;
static struct h1_response S;

static int reqn(const char *s, size_t n)
{
    struct h1_parser p = {0};
    memset(&R, 0xA5, sizeof R); /* no stale field may pass for a parsed one */
    return h1_parse_request(&p, s, n, &lim, &R);
}

static int req(const char *s) { return reqn(s, strlen(s)); }

/* A literal that may hold NUL bytes. */
#define REQ_LIT(s) reqn((s), sizeof(s) - 1)

static int resp_head(const char *s, bool head)
{
    struct h1_parser p = {0};
    memset(&S, 0xA5, sizeof S);
    return h1_parse_response(&p, s, strlen(s), &lim, head, &S);
}

static int resp(const char *s) { return resp_head(s, false); }

static bool str_is(struct h1_str s, const char *want)
{
    return s.len == strlen(want) && memcmp(s.p, want, s.len) == 0;
}

/* Request with one extra field line after Host. */
static int req_with(const char *field)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "POST /x HTTP/1.1\r\nHost: a\r\n%s\r\n\r\n", field);
    return req(buf);
}

/* ---- character classes ---- */

static bool ref_tchar(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static void test_class_table(void **st)
{
    for (int c = 0; c < 256; c++) {
        unsigned k = h1_class[c];
        assert_int_equal(!!(k & H1_C_TCHAR), ref_tchar(c));
        assert_int_equal(!!(k & H1_C_TARGET), c >= 0x21 && c <= 0x7e);
        assert_int_equal(!!(k & H1_C_FVAL), c == '\t' || (c >= 0x20 && c != 0x7f));
        assert_int_equal(!!(k & H1_C_HEX), c < 128 && c && strchr("0123456789abcdefABCDEF", c));
        bool host = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c && strchr("-._~!$&'()*+;=", c));
        assert_int_equal(!!(k & H1_C_HOST), host);
        bool qd = c == '\t' || c == ' ' || c == 0x21 || (c >= 0x23 && c <= 0x5b) ||
                  (c >= 0x5d && c <= 0x7e) || c >= 0x80;
        assert_int_equal(!!(k & H1_C_QDTEXT), qd);
    }
}

/* ---- request line ---- */

static void test_simple_get(void **st)
{
    const char *m = "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\nNEXT";
    assert_int_equal(req(m), H1_OK);
    assert_true(str_is(R.method, "GET"));
    assert_true(str_is(R.target, "/a?b=c"));
    assert_int_equal(R.version_minor, 1);
    assert_int_equal(R.nheaders, 2);
    assert_true(str_is(R.headers[0].name, "Host"));
    assert_true(str_is(R.headers[0].value, "example.com"));
    assert_true(str_is(R.headers[1].value, "*/*"));
    assert_int_equal(R.head_len, strlen(m) - 4);
    assert_int_equal(R.body, H1_BODY_NONE);
    assert_int_equal(R.host_index, 0);
    assert_true(R.keep_alive);
    assert_false(R.expect_continue);
    assert_false(R.upgrade);
}

static void test_lf_only_lines(void **st)
{
    const char *m = "GET / HTTP/1.1\nHost: a\nX: y \n\n";
    assert_int_equal(req(m), H1_OK);
    assert_int_equal(R.head_len, strlen(m));
    assert_int_equal(R.nheaders, 2);
    assert_true(str_is(R.headers[1].value, "y"));
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\n\r\n"), H1_OK);
}

static void test_leading_empty_line(void **st)
{
    const char *m = "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(req(m), H1_OK);
    assert_int_equal(R.head_len, strlen(m));
    assert_true(str_is(R.method, "GET"));
    assert_int_equal(req("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_OK);
    assert_true(str_is(R.method, "GET"));
    /* only one */
    assert_int_equal(req("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_SYNTAX);
    assert_int_equal(req("\rGET / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_BARE_CR);
}

static void test_version_minor(void **st)
{
    assert_int_equal(req("GET / HTTP/1.2\r\nHost: a\r\n\r\n"), H1_OK);
    assert_int_equal(R.version_minor, 1);
    assert_int_equal(req("GET / HTTP/1.9\r\nHost: a\r\n\r\n"), H1_OK);
    assert_int_equal(R.version_minor, 1);
    assert_int_equal(req("GET / HTTP/1.0\r\n\r\n"), H1_OK);
    assert_int_equal(R.version_minor, 0);
}

static void test_version_unsupported(void **st)
{
    assert_int_equal(req("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), H1_ERR_VERSION_UNSUPPORTED);
    assert_int_equal(req("GET / HTTP/0.9\r\nHost: a\r\n\r\n"), H1_ERR_VERSION_UNSUPPORTED);
    assert_int_equal(h1_error_status(H1_ERR_VERSION_UNSUPPORTED), 505);
}

static void test_version_malformed(void **st)
{
    static const char *bad[] = {
        "GET / HTTP/1.10\r\n\r\n", "GET / HTTP/1\r\n\r\n",  "GET / http/1.1\r\n\r\n",
        "GET / HTTP/1.x\r\n\r\n",  "GET / HTTP/11.1\r\n\r\n", "GET / HTTP 1.1\r\n\r\n",
        "GET / HTTP/1,1\r\n\r\n",  "GET / XTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) assert_int_equal(req(bad[i]), H1_ERR_VERSION);
    assert_int_equal(req("GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), H1_ERR_SYNTAX);
    assert_int_equal(req("GET / HTTP/1.1 x\r\nHost: a\r\n\r\n"), H1_ERR_SYNTAX);
}

static void test_method_not_token(void **st)
{
    assert_int_equal(req("G(T / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_METHOD);
    assert_int_equal(req("G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_METHOD);
    assert_int_equal(req(" GET / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_METHOD);
    assert_int_equal(req("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_METHOD);
    assert_int_equal(req("G\xc3\xa9T / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_METHOD);
    /* any token is a method: the parser does not judge which ones exist */
    assert_int_equal(req("M-SEARCH * HTTP/1.1\r\nHost: a\r\n\r\n"), H1_OK);
    assert_true(str_is(R.method, "M-SEARCH"));
}

static void test_single_sp_separators(void **st)
{
    assert_int_equal(req("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_SYNTAX);
    assert_int_equal(req("GET /  HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_VERSION);
    assert_int_equal(req("GET /\r\nHost: a\r\n\r\n"), H1_ERR_SYNTAX); /* HTTP/0.9 */
    assert_int_equal(req("GET\r\nHost: a\r\n\r\n"), H1_ERR_SYNTAX);
}

static void test_target_chars(void **st)
{
    assert_int_equal(req("GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_TARGET);
    assert_int_equal(req("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_TARGET);
    assert_int_equal(req("GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_TARGET);
    assert_int_equal(req("GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_TARGET);
    assert_int_equal(REQ_LIT("GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_TARGET);
    assert_int_equal(req("GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n"), H1_ERR_BARE_CR);
}

static void test_absolute_form_target(void **st)
{
    assert_int_equal(req("GET http://ex.com:8080/p?q#f HTTP/1.1\r\nHost: ex.com:8080\r\n\r\n"),
                     H1_OK);
    assert_true(str_is(R.target, "http://ex.com:8080/p?q#f"));
    assert_int_equal(req("CONNECT ex.com:443 HTTP/1.1\r\nHost: ex.com:443\r\n\r\n"), H1_OK);
    assert_true(str_is(R.target, "ex.com:443"));
    assert_int_equal(req("OPTIONS * HTTP/1.1\r\nHost: ex.com\r\n\r\n"), H1_OK);
}

static void test_target_too_long(void **st)
{
    char buf[3000];
    int n = snprintf(buf, sizeof buf, "GET /");
    memset(buf + n, 'a', 1023); /* target = 1024 bytes, the limit */
    n += 1023;
    n += snprintf(buf + n, sizeof buf - (size_t)n, " HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_int_equal(reqn(buf, (size_t)n), H1_OK);
    assert_int_equal(R.target.len, 1024);

    n = snprintf(buf, sizeof buf, "GET /");
    memset(buf + n, 'a', 2000);
    /* known as soon as byte 1025 of the target arrives, head incomplete */
    struct h1_parser p = {0};
    for (size_t len = 1; len <= 1028; len++)
        assert_int_equal(h1_parse_request(&p, buf, len, &lim, &R), H1_AGAIN);
    assert_int_equal(h1_parse_request(&p, buf, 1029, &lim, &R), H1_ERR_TARGET_TOO_LONG);
    assert_int_equal(reqn(buf, 1029), H1_ERR_TARGET_TOO_LONG);
    assert_int_equal(h1_error_status(H1_ERR_TARGET_TOO_LONG), 414);
}

static void test_bare_cr(void **st)
{
    assert_int_equal(req("GET / HTTP/1.1\rHost: a\r\n\r\n"), H1_ERR_BARE_CR);
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"), H1_ERR_BARE_CR);
    assert_int_equal(req("GET / HTTP/1.1\r\nHo\rst: a\r\n\r\n"), H1_ERR_BARE_CR);
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\n\r\r\n\r\n"), H1_ERR_BARE_CR);
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\r\n\r\n"), H1_ERR_BARE_CR);
}

/* ---- field lines ---- */

static void test_obs_fold(void **st)
{
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n"), H1_ERR_OBS_FOLD);
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n"), H1_ERR_OBS_FOLD);
    /* whitespace before the first field line: a request-smuggling classic */
    assert_int_equal(req("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), H1_ERR_OBS_FOLD);
    assert_int_equal(req("GET / HTTP/1.1\r\n\tHost: a\r\n\r\n"), H1_ERR_OBS_FOLD);
}

static void test_space_before_colon(void **st)
{
    assert_int_equal(req_with("Content-Length : 5"), H1_ERR_SPACE_BEFORE_COLON);
    assert_int_equal(req_with("Transfer-Encoding\t: chunked"), H1_ERR_SPACE_BEFORE_COLON);
    assert_int_equal(req_with("X  \t :b"), H1_ERR_SPACE_BEFORE_COLON);
}

static void test_header_name(void **st)
{
    assert_int_equal(req_with(": empty"), H1_ERR_HEADER_NAME);
    assert_int_equal(req_with("X(Y: b"), H1_ERR_HEADER_NAME);
    assert_int_equal(req_with("X Y: b"), H1_ERR_HEADER_NAME);
    assert_int_equal(req_with("X\xc3\xa9: b"), H1_ERR_HEADER_NAME);
    assert_int_equal(req_with("X@: b"), H1_ERR_HEADER_NAME);
    assert_int_equal(req_with("NoColon"), H1_ERR_SYNTAX);
    assert_int_equal(req("GET / HTTP/1.1\nHost: a\nNoColon\n\n"), H1_ERR_SYNTAX);
}

static void test_header_value_ctl(void **st)
{
    assert_int_equal(REQ_LIT("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"), H1_ERR_HEADER_VALUE);
    assert_int_equal(req_with("X: a\x01"), H1_ERR_HEADER_VALUE);
    assert_int_equal(req_with("X: a\x1f b"), H1_ERR_HEADER_VALUE);
    assert_int_equal(req_with("X: a\x7f"), H1_ERR_HEADER_VALUE);
    assert_int_equal(req_with("X: \x0b"), H1_ERR_HEADER_VALUE);
}

static void test_obs_text_value(void **st)
{
    assert_int_equal(req_with("X: caf\xc3\xa9 \xff\x80"), H1_OK);
    assert_true(str_is(R.headers[1].value, "caf\xc3\xa9 \xff\x80"));
    assert_int_equal(req_with("X: a\tb"), H1_OK);
    assert_true(str_is(R.headers[1].value, "a\tb"));
}

static void test_empty_and_trimmed_value(void **st)
{
    assert_int_equal(req_with("X:"), H1_OK);
    assert_int_equal(R.headers[1].value.len, 0);
    assert_int_equal(req_with("X: \t "), H1_OK);
    assert_int_equal(R.headers[1].value.len, 0);
    assert_int_equal(req_with("X: \t a  b \t"), H1_OK);
    assert_true(str_is(R.headers[1].value, "a  b"));
    assert_true(str_is(R.headers[1].name, "X"));
}

static void test_too_many_headers(void **st)
{
    static char buf[8192];
    size_t n = (size_t)snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 1; i < H1_MAX_HEADERS; i++) n += (size_t)snprintf(buf + n, sizeof buf - n, "X%d: v\r\n", i);
    memcpy(buf + n, "\r\n", 3);
    assert_int_equal(reqn(buf, n + 2), H1_OK);
    assert_int_equal(R.nheaders, H1_MAX_HEADERS);
    n += (size_t)snprintf(buf + n, sizeof buf - n, "Y: v\r\n\r\n");
    assert_int_equal(reqn(buf, n), H1_ERR_TOO_MANY_HEADERS);
    assert_int_equal(h1_error_status(H1_ERR_TOO_MANY_HEADERS), 431);
}

static void test_head_too_large(void **st)
{
    const struct h1_limits small = {.max_head_bytes = 64, .max_target_bytes = 32};
    char buf[200];
    int n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    memset(buf + n, 'v', sizeof buf - (size_t)n);
    struct h1_parser p = {0};
    for (size_t len = 1; len <= 64; len++)
        assert_int_equal(h1_parse_request(&p, buf, len, &small, &R), H1_AGAIN);
    assert_int_equal(h1_parse_request(&p, buf, 65, &small, &R), H1_ERR_HEAD_TOO_LARGE);
    assert_int_equal(h1_parse_request(&p, buf, 200, &small, &R), H1_ERR_HEAD_TOO_LARGE);
    assert_int_equal(h1_error_status(H1_ERR_HEAD_TOO_LARGE), 431);

    /* a head of exactly the limit is fine, one byte more is not */
    char exact[64];
    n = snprintf(exact, sizeof exact, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    memset(exact + n, 'v', 64 - 4 - (size_t)n);
    memcpy(exact + 60, "\r\n\r\n", 4);
    memset(&p, 0, sizeof p);
    assert_int_equal(h1_parse_request(&p, exact, 64, &small, &R), H1_OK);
    assert_int_equal(R.head_len, 64);
    const struct h1_limits smaller = {.max_head_bytes = 63, .max_target_bytes = 32};
    memset(&p, 0, sizeof p);
    assert_int_equal(h1_parse_request(&p, exact, 64, &smaller, &R), H1_ERR_HEAD_TOO_LARGE);
}

/* ---- framing ---- */

static void test_cl_zero(void **st)
{
    assert_int_equal(req_with("Content-Length: 0"), H1_OK);
    assert_int_equal(R.body, H1_BODY_LENGTH);
    assert_int_equal(R.content_length, 0);
}

static void test_cl_values(void **st)
{
    assert_int_equal(req_with("Content-Length: 42"), H1_OK);
    assert_int_equal(R.content_length, 42);
    assert_int_equal(req_with("Content-Length: 05"), H1_OK); /* leading zeros are digits */
    assert_int_equal(R.content_length, 5);
    assert_int_equal(req_with("Content-Length: 5 "), H1_OK); /* trailing OWS is not the value */
    assert_int_equal(R.content_length, 5);
    assert_int_equal(req_with("content-length:\t7"), H1_OK);
    assert_int_equal(R.content_length, 7);
}

static void test_cl_invalid(void **st)
{
    static const char *bad[] = {"+5", "-5", "0x5", "5 5", "", "5a", "five", "5.0", "5;x"};
    char f[64];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(f, sizeof f, "Content-Length: %s", bad[i]);
        assert_int_equal(req_with(f), H1_ERR_CL_INVALID);
    }
}

static void test_cl_big(void **st)
{
    assert_int_equal(req_with("Content-Length: 9223372036854775807"), H1_OK);
    assert_true(R.content_length == (uint64_t)INT64_MAX);
    assert_int_equal(req_with("Content-Length: 09223372036854775807"), H1_OK);
    assert_int_equal(req_with("Content-Length: 9223372036854775808"), H1_ERR_CL_INVALID);
    assert_int_equal(req_with("Content-Length: 18446744073709551615"), H1_ERR_CL_INVALID);
    assert_int_equal(req_with("Content-Length: 18446744073709551616"), H1_ERR_CL_INVALID);
    assert_int_equal(req_with("Content-Length: 99999999999999999999999999"), H1_ERR_CL_INVALID);
}

static void test_cl_list_and_duplicate(void **st)
{
    assert_int_equal(req_with("Content-Length: 5,5"), H1_ERR_CL_DUPLICATE);
    assert_int_equal(req_with("Content-Length: 5, 5"), H1_ERR_CL_DUPLICATE);
    assert_int_equal(req_with("Content-Length: 5, 6"), H1_ERR_CL_DUPLICATE);
    assert_int_equal(req_with("Content-Length: 5, x"), H1_ERR_CL_INVALID);
    assert_int_equal(req_with("Content-Length: 5\r\nContent-Length: 5"), H1_ERR_CL_DUPLICATE);
    assert_int_equal(req_with("Content-Length: 5\r\ncontent-length: 6"), H1_ERR_CL_DUPLICATE);
}

static void test_cl_and_te(void **st)
{
    assert_int_equal(req_with("Content-Length: 5\r\nTransfer-Encoding: chunked"), H1_ERR_CL_AND_TE);
    assert_int_equal(req_with("Transfer-Encoding: chunked\r\nContent-Length: 5"), H1_ERR_CL_AND_TE);
}

static void test_te_chunked(void **st)
{
    assert_int_equal(req_with("Transfer-Encoding: chunked"), H1_OK);
    assert_int_equal(R.body, H1_BODY_CHUNKED);
    assert_int_equal(req_with("Transfer-Encoding:  chunked\t"), H1_OK); /* OWS */
    assert_int_equal(R.body, H1_BODY_CHUNKED);
    assert_int_equal(req_with("Transfer-Encoding: Chunked"), H1_OK);
    assert_int_equal(req_with("transfer-encoding: CHUNKED"), H1_OK);
    assert_int_equal(R.body, H1_BODY_CHUNKED);
}

static void test_te_http10(void **st)
{
    assert_int_equal(req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
                     H1_ERR_TE_NOT_CHUNKED);
}

static void test_te_not_chunked_last(void **st)
{
    assert_int_equal(req_with("Transfer-Encoding: chunked, gzip"), H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(req_with("Transfer-Encoding: chunked, chunked"), H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(req_with("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
                     H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(req_with("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip"),
                     H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(h1_error_status(H1_ERR_TE_NOT_CHUNKED), 400);
}

static void test_te_malformed(void **st)
{
    assert_int_equal(req_with("Transfer-Encoding:"), H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(req_with("Transfer-Encoding: chunked,"), H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(req_with("Transfer-Encoding: , chunked"), H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(req_with("Transfer-Encoding: chunked;x=1"), H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(req_with("Transfer-Encoding: gzip, chunked ; x=1"), H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(req_with("Transfer-Encoding: \"chunked\""), H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(req_with("Transfer-Encoding: chun ked"), H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(req_with("Transfer-Encoding: gzip;q=\"a, chunked\", chunked"),
                     H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(req_with("Transfer-Encoding: xchunked"), H1_ERR_TE_UNKNOWN);
}

static void test_te_unknown(void **st)
{
    assert_int_equal(req_with("Transfer-Encoding: gzip, chunked"), H1_ERR_TE_UNKNOWN);
    assert_int_equal(req_with("Transfer-Encoding: gzip ,\tchunked"), H1_ERR_TE_UNKNOWN);
    assert_int_equal(req_with("Transfer-Encoding: identity"), H1_ERR_TE_UNKNOWN);
    assert_int_equal(req_with("Transfer-Encoding: gzip"), H1_ERR_TE_UNKNOWN);
    assert_int_equal(req_with("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"),
                     H1_ERR_TE_UNKNOWN);
    assert_int_equal(req_with("Transfer-Encoding: foo;a=b, chunked"), H1_ERR_TE_UNKNOWN);
    assert_int_equal(h1_error_status(H1_ERR_TE_UNKNOWN), 501);
}

static void test_no_body(void **st)
{
    assert_int_equal(req("POST / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_OK);
    assert_int_equal(R.body, H1_BODY_NONE);
}

/* ---- Host ---- */

static void test_host_missing(void **st)
{
    assert_int_equal(req("GET / HTTP/1.1\r\nX: y\r\n\r\n"), H1_ERR_HOST_MISSING);
    assert_int_equal(req("GET / HTTP/1.0\r\nX: y\r\n\r\n"), H1_OK);
    assert_int_equal(R.host_index, -1);
}

static void test_host_duplicate(void **st)
{
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), H1_ERR_HOST_DUPLICATE);
    assert_int_equal(req("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n"), H1_ERR_HOST_DUPLICATE);
}

static void test_host_valid(void **st)
{
    static const char *good[] = {
        "example.com", "example.com:8080", "1.2.3.4", "1.2.3.4:80", "[::1]", "[::1]:443",
        "[2001:db8::1]", "[::ffff:1.2.3.4]", "[v1.fe80::a+en1]", "%41b.com", "_svc.local",
        "a-b~c!$&'()*+;=", "localhost:65535", "x:0",
    };
    char buf[256];
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", good[i]);
        assert_int_equal(req(buf), H1_OK);
        assert_true(str_is(R.headers[R.host_index].value, good[i]));
    }
}

static void test_host_invalid(void **st)
{
    static const char *bad[] = {
        "",         "a b",      "a@b",      "user@a.com", "[::1",   "[::1]x",  "[::g]",
        "[]",       "host:",    "host:abc", "host:99999", "h:123456", ":80",   "a,b",
        "a/b",      "%4",       "%zz.com",  "a\"b",       "[v1.]",  "[vx.a]",  "a:1:2",
        "a\xc3\xa9", "[1.2.3.4]",
    };
    char buf[256];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", bad[i]);
        assert_int_equal(req(buf), H1_ERR_HOST_INVALID);
    }
}

/* ---- connection semantics ---- */

static void test_keep_alive(void **st)
{
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_OK);
    assert_true(R.keep_alive);
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), H1_OK);
    assert_false(R.keep_alive);
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo\r\nconnection: x, CLOSE\r\n\r\n"),
                     H1_OK);
    assert_false(R.keep_alive);
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n"), H1_OK);
    assert_true(R.keep_alive);
}

static void test_http10_keep_alive(void **st)
{
    assert_int_equal(req("GET / HTTP/1.0\r\n\r\n"), H1_OK);
    assert_false(R.keep_alive);
    assert_int_equal(req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), H1_OK);
    assert_true(R.keep_alive);
    assert_int_equal(req("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"), H1_OK);
    assert_false(R.keep_alive);
}

static void test_expect_continue(void **st)
{
    assert_int_equal(req_with("Expect: 100-Continue"), H1_OK);
    assert_true(R.expect_continue);
    assert_int_equal(req_with("Expect: 100-continue-x"), H1_OK);
    assert_false(R.expect_continue);
}

static void test_upgrade(void **st)
{
    assert_int_equal(req_with("Connection: Upgrade\r\nUpgrade: websocket"), H1_OK);
    assert_true(R.upgrade);
    assert_true(R.keep_alive);
    assert_int_equal(req_with("Upgrade: websocket"), H1_OK);
    assert_false(R.upgrade);
    assert_int_equal(req_with("Connection: keep-alive, upgrade"), H1_OK);
    assert_false(R.upgrade);
}

/* ---- incremental feeding ---- */

static void test_incremental_matches_whole(void **st)
{
    const char *m = "\r\nPOST /upload?x=1 HTTP/1.1\r\nHost: ex.com:81\r\nContent-Length: 12\r\n"
                    "Expect: 100-continue\r\nX-Empty:\r\n\r\nhello world!";
    size_t n = strlen(m);
    assert_int_equal(req(m), H1_OK);
    struct h1_request whole = R;
    struct h1_parser p = {0};
    size_t len;
    int rc = H1_AGAIN;
    for (len = 0; len <= n && rc == H1_AGAIN; len++) rc = h1_parse_request(&p, m, len, &lim, &R);
    assert_int_equal(rc, H1_OK);
    assert_int_equal(len - 1, whole.head_len); /* done exactly when the blank line arrived */
    assert_int_equal(R.head_len, whole.head_len);
    assert_int_equal(R.nheaders, whole.nheaders);
    assert_ptr_equal(R.target.p, whole.target.p);
    assert_int_equal(R.content_length, 12);
    assert_true(R.expect_continue);
    /* a parse after OK without a reset returns the same answer */
    assert_int_equal(h1_parse_request(&p, m, n, &lim, &R), H1_OK);
    assert_int_equal(R.head_len, whole.head_len);
}

static void test_pipelined_bytes_ignored(void **st)
{
    const char *m = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE \x01\x02\r\r\r";
    assert_int_equal(req(m), H1_OK);
    assert_int_equal(R.head_len, strlen("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"));
}

/* A head of about 30 KB: first_line, then 290-byte field lines. */
static size_t big_head(char *buf, size_t cap, const char *first_line, size_t *nfields)
{
    size_t n = (size_t)snprintf(buf, cap, "%s\r\nHost: a\r\n", first_line);
    *nfields = 1;
    for (int i = 0; n < 30000; i++, ++*nfields) {
        n += (size_t)snprintf(buf + n, cap - n, "X-%03d: ", i);
        memset(buf + n, 'v', 280);
        n += 280;
        memcpy(buf + n, "\r\n", 2);
        n += 2;
    }
    memcpy(buf + n, "\r\n", 2);
    return n + 2;
}

/* Fed one byte at a time, each call may look again only at the few bytes it
 * could not decide (a CR, a partial version), so the total work is linear:
 * work counts the bytes each call had to look at, from p->scanned on. */
static void test_no_rescan(void **st)
{
    static char buf[40000];
    const struct h1_limits big = {.max_head_bytes = 65536, .max_target_bytes = 1024};
    struct h1_parser p = {0};
    size_t nf;
    size_t n = big_head(buf, sizeof buf, "GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1", &nf);
    size_t work = 0;
    for (size_t len = 1; len < n; len++) {
        work += len - p.scanned;
        assert_int_equal(h1_parse_request(&p, buf, len, &big, &R), H1_AGAIN);
        assert_true(p.scanned + 10 >= len);
    }
    assert_int_equal(h1_parse_request(&p, buf, n, &big, &R), H1_OK);
    assert_int_equal(R.head_len, n);
    assert_int_equal(R.nheaders, nf);
    assert_true(work <= 3 * n);

    h1_parser_reset(&p);
    n = big_head(buf, sizeof buf, "HTTP/1.1 200 OK", &nf);
    work = 0;
    for (size_t len = 1; len < n; len++) {
        work += len - p.scanned;
        assert_int_equal(h1_parse_response(&p, buf, len, &big, false, &S), H1_AGAIN);
        assert_true(p.scanned + 2 >= len);
    }
    assert_int_equal(h1_parse_response(&p, buf, n, &big, false, &S), H1_OK);
    assert_int_equal(S.head_len, n);
    assert_int_equal(S.nheaders, nf);
    assert_true(work <= 3 * n);
}

/* ---- responses ---- */

static void test_response_cl(void **st)
{
    const char *m = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello";
    assert_int_equal(resp(m), H1_OK);
    assert_int_equal(S.status, 200);
    assert_true(str_is(S.reason, "OK"));
    assert_int_equal(S.version_minor, 1);
    assert_int_equal(S.body, H1_BODY_LENGTH);
    assert_int_equal(S.content_length, 5);
    assert_int_equal(S.nheaders, 2);
    assert_int_equal(S.head_len, strlen(m) - 5);
    assert_true(S.keep_alive);
}

static void test_response_chunked(void **st)
{
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), H1_OK);
    assert_int_equal(S.body, H1_BODY_CHUNKED);
    assert_true(S.keep_alive);
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), H1_OK);
    assert_int_equal(S.body, H1_BODY_CHUNKED);
}

static void test_response_until_close(void **st)
{
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n"), H1_OK);
    assert_int_equal(S.body, H1_BODY_UNTIL_CLOSE);
    assert_false(S.keep_alive);
    /* RFC 9112 §6.3 rule 4b: chunked not last in a response reads to the close */
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), H1_OK);
    assert_int_equal(S.body, H1_BODY_UNTIL_CLOSE);
    assert_false(S.keep_alive);
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), H1_OK);
    assert_int_equal(S.body, H1_BODY_UNTIL_CLOSE);
}

static void test_response_no_body_statuses(void **st)
{
    assert_int_equal(resp_head("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", true), H1_OK);
    assert_int_equal(S.body, H1_BODY_NONE);
    assert_true(S.keep_alive);
    assert_int_equal(resp_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true), H1_OK);
    assert_int_equal(S.body, H1_BODY_NONE);
    assert_int_equal(resp_head("HTTP/1.1 200 OK\r\n\r\n", true), H1_OK);
    assert_int_equal(S.body, H1_BODY_NONE);
    assert_true(S.keep_alive);
    assert_int_equal(resp("HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n"), H1_OK);
    assert_int_equal(S.body, H1_BODY_NONE);
    assert_int_equal(resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n"), H1_OK);
    assert_int_equal(S.body, H1_BODY_NONE);
    assert_true(S.keep_alive);
    assert_int_equal(resp("HTTP/1.1 100 Continue\r\n\r\n"), H1_OK);
    assert_int_equal(S.body, H1_BODY_NONE);
    assert_int_equal(resp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\n\r\n"),
                     H1_OK);
    assert_int_equal(S.status, 101);
    assert_int_equal(S.body, H1_BODY_NONE);
    assert_int_equal(resp("HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"), H1_OK);
    assert_int_equal(S.body, H1_BODY_NONE);
}

static void test_response_framing_errors(void **st)
{
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     H1_ERR_CL_AND_TE);
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
                     H1_ERR_CL_DUPLICATE);
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n"), H1_ERR_CL_DUPLICATE);
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), H1_ERR_CL_INVALID);
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
                     H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: ,\r\n\r\n"), H1_ERR_TE_NOT_CHUNKED);
    assert_int_equal(resp("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     H1_ERR_TE_NOT_CHUNKED);
    /* invalid framing is refused even where the body is known to be empty */
    assert_int_equal(resp_head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", true),
                     H1_ERR_CL_DUPLICATE);
}

static void test_response_status_line(void **st)
{
    assert_int_equal(resp("HTTP/1.1 200\r\n\r\n"), H1_OK);
    assert_int_equal(S.reason.len, 0);
    assert_int_equal(resp("HTTP/1.1 200 \r\n\r\n"), H1_OK);
    assert_int_equal(S.reason.len, 0);
    assert_int_equal(resp("HTTP/1.1 404 Not  Found \xc3\xa9\r\nContent-Length: 0\r\n\r\n"), H1_OK);
    assert_true(str_is(S.reason, "Not  Found \xc3\xa9"));
    assert_int_equal(resp("HTTP/1.1 999 X\n\n"), H1_OK);
    assert_int_equal(S.status, 999);
    assert_int_equal(resp("HTTP/1.2 200 OK\r\n\r\n"), H1_OK);
    assert_int_equal(S.version_minor, 1);

    static const char *bad[] = {
        "HTTP/1.1 20 OK\r\n\r\n",  "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1  200 OK\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",   "HTTP/2.0 200 OK\r\n\r\n",  "HTTP/1.1 200OK\r\n\r\n",
        "HTTP/1.1 099 X\r\n\r\n",  "HTTP/1.1 2x0 OK\r\n\r\n",  "http/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 200 O\x01K\r\n\r\n", "\r\n\r\n", "HTTP/1.1\r\n\r\n", "ICY 200 OK\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) assert_int_equal(resp(bad[i]), H1_ERR_STATUS);
    assert_int_equal(h1_error_status(H1_ERR_STATUS), 502);
    assert_int_equal(resp("HTTP/1.1 200 O\rK\r\n\r\n"), H1_ERR_BARE_CR);
}

static void test_response_fields(void **st)
{
    assert_int_equal(resp("HTTP/1.1 200 OK\r\n folded: x\r\n\r\n"), H1_ERR_OBS_FOLD);
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nX : y\r\n\r\n"), H1_ERR_SPACE_BEFORE_COLON);
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nX: \x01\r\n\r\n"), H1_ERR_HEADER_VALUE);
    assert_int_equal(resp("HTTP/1.1 200 OK\nContent-Length: 0\n\n"), H1_OK);
    assert_int_equal(S.body, H1_BODY_LENGTH);
}

static void test_response_keep_alive(void **st)
{
    assert_int_equal(resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), H1_OK);
    assert_false(S.keep_alive);
    assert_int_equal(resp("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"), H1_OK);
    assert_false(S.keep_alive);
    assert_int_equal(resp("HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"),
                     H1_OK);
    assert_true(S.keep_alive);
    assert_int_equal(S.version_minor, 0);
}

/* ---- helpers ---- */

static void test_helpers(void **st)
{
    assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\nConnection: a, Keep-Alive ,b\r\n\r\n"),
                     H1_OK);
    assert_int_equal(h1_find_header(R.headers, R.nheaders, "x-a", 0), 1);
    assert_int_equal(h1_find_header(R.headers, R.nheaders, "x-a", 2), 2);
    assert_int_equal(h1_find_header(R.headers, R.nheaders, "x-a", 3), -1);
    assert_int_equal(h1_find_header(R.headers, R.nheaders, "x-b", 0), -1);
    assert_int_equal(h1_find_header(R.headers, R.nheaders, "host", 0), 0);
    struct h1_str conn = R.headers[3].value;
    assert_true(h1_value_has_token(conn, "keep-alive"));
    assert_true(h1_value_has_token(conn, "a"));
    assert_true(h1_value_has_token(conn, "b"));
    assert_false(h1_value_has_token(conn, "keep"));
    assert_false(h1_value_has_token((struct h1_str){"", 0}, "a"));
    assert_true(h1_name_is(R.headers[0].name, "host"));
    assert_false(h1_name_is(R.headers[0].name, "hos"));
    assert_false(h1_name_is(R.headers[0].name, "hosts"));
}

static void test_error_codes(void **st)
{
    for (int e = H1_ERR_STATUS; e <= H1_ERR_SYNTAX; e++) {
        int s = h1_error_status(e);
        assert_true(s == 400 || s == 414 || s == 431 || s == 501 || s == 502 || s == 505);
        assert_string_not_equal(h1_error_str(e), "unknown error");
        for (int f = e + 1; f <= H1_ERR_SYNTAX; f++) assert_string_not_equal(h1_error_str(e), h1_error_str(f));
    }
    assert_int_equal(h1_error_status(H1_ERR_SYNTAX), 400);
    assert_int_equal(h1_error_status(H1_ERR_HOST_MISSING), 400);
    assert_string_equal(h1_error_str(-1000), "unknown error");
    assert_string_not_equal(h1_error_str(H1_OK), h1_error_str(H1_AGAIN));
}

static void test_default_limits(void **st)
{
    struct h1_parser p = {0};
    const char *m = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(h1_parse_request(&p, m, strlen(m), NULL, &R), H1_OK);
    const struct h1_limits zero = {0};
    h1_parser_reset(&p);
    assert_int_equal(h1_parse_request(&p, m, strlen(m), &zero, &R), H1_OK);
}

/* ---- chunked ---- */

/* Feeds msg[0..n) to a fresh decoder the way a connection would: the window
 * grows by piece sizes drawn from *seed (1 = byte by byte, 0 = all at once),
 * consumed bytes are dropped, the rest kept. Collects the body in out. */
static int feed_chunked(const char *msg, size_t n, unsigned *seed, char *out, size_t *out_len,
                        size_t *end, struct h1_chunked *c)
{
    size_t off = 0, avail = 0;
    *out_len = 0;
    h1_chunked_init(c);
    for (;;) {
        const char *d;
        size_t dl, used;
        int rc = h1_chunked_decode(c, msg + off, avail - off, &used, &d, &dl);
        assert_true(used <= avail - off);
        if (rc == H1_CHUNK_DATA) {
            assert_true(dl > 0 && d >= msg + off && d + dl == msg + off + used);
            memcpy(out + *out_len, d, dl);
            *out_len += dl;
        } else {
            assert_null(d);
        }
        off += used;
        if (rc == H1_CHUNK_DATA) continue;
        if (rc == H1_CHUNK_NEED_MORE && avail < n) {
            size_t step = n;
            if (seed && *seed == 1) step = 1;
            else if (seed) step = 1 + (*seed = *seed * 1103515245u + 12345u) % 13;
            avail = avail + step > n ? n : avail + step;
            continue;
        }
        *end = off;
        return rc;
    }
}

static int decode_whole(const char *msg, size_t n, char *out, size_t *out_len, size_t *end,
                        struct h1_chunked *c)
{
    return feed_chunked(msg, n, NULL, out, out_len, end, c);
}

static struct h1_chunked C;

static int dec(const char *msg)
{
    char out[4096];
    size_t ol, end;
    return decode_whole(msg, strlen(msg), out, &ol, &end, &C);
}

static void test_chunked_basic(void **st)
{
    const char *m = "5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\nGET /next";
    char out[64];
    size_t ol, end;
    assert_int_equal(decode_whole(m, strlen(m), out, &ol, &end, &C), H1_CHUNK_DONE);
    assert_int_equal(ol, 12);
    assert_memory_equal(out, "hello, world", 12);
    assert_int_equal(end, strlen(m) - strlen("GET /next"));
    assert_int_equal(C.ntrailers, 0);
    assert_int_equal(C.trailer_len, 2);
    /* hex, both cases */
    assert_int_equal(dec("a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n"), H1_CHUNK_DONE);
    assert_int_equal(dec("0\r\n\r\n"), H1_CHUNK_DONE);
    assert_int_equal(dec("000\r\n\r\n"), H1_CHUNK_DONE);
}

static void test_chunked_done_is_sticky(void **st)
{
    const char *m = "0\r\n\r\n";
    size_t used, dl;
    const char *d;
    h1_chunked_init(&C);
    assert_int_equal(h1_chunked_decode(&C, m, 5, &used, &d, &dl), H1_CHUNK_DONE);
    assert_int_equal(used, 5);
    assert_int_equal(h1_chunked_decode(&C, "xyz", 3, &used, &d, &dl), H1_CHUNK_DONE);
    assert_int_equal(used, 0);
}

static void test_chunked_error_is_sticky(void **st)
{
    size_t used, dl;
    const char *d;
    h1_chunked_init(&C);
    assert_int_equal(h1_chunked_decode(&C, "x\r\n", 3, &used, &d, &dl), H1_ERR_CHUNK_SIZE);
    assert_int_equal(h1_chunked_decode(&C, "0\r\n\r\n", 5, &used, &d, &dl), H1_ERR_CHUNK_SIZE);
}

static void test_chunked_extensions(void **st)
{
    assert_int_equal(dec("5;a\r\nhello\r\n0\r\n\r\n"), H1_CHUNK_DONE);
    assert_int_equal(dec("5;a=b;c=\"d e\\\"f\"\r\nhello\r\n0;last\r\n\r\n"), H1_CHUNK_DONE);
    assert_int_equal(dec("5;name=\"\"\r\nhello\r\n0\r\n\r\n"), H1_CHUNK_DONE);
    assert_int_equal(dec("5;n=\"\xc3\xa9\\\t\"\r\nhello\r\n0\r\n\r\n"), H1_CHUNK_DONE);
}

static void test_chunked_ext_malformed(void **st)
{
    static const char *bad[] = {
        "5;\r\nhello\r\n0\r\n\r\n",       "5;=x\r\nhello\r\n0\r\n\r\n",
        "5;a=\r\nhello\r\n0\r\n\r\n",     "5;a b\r\nhello\r\n0\r\n\r\n",
        "5; a\r\nhello\r\n0\r\n\r\n",     "5;a=\"x\r\nhello\r\n0\r\n\r\n",
        "5;a=\"x\"y\r\nhello\r\n0\r\n\r\n", "5;a=b=c\r\nhello\r\n0\r\n\r\n",
        "5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n", "5;a@\r\nhello\r\n0\r\n\r\n",
        "5;a=\"\\\x01\"\r\nhello\r\n0\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) assert_int_equal(dec(bad[i]), H1_ERR_CHUNK_EXT);
}

static void test_chunked_ext_too_long(void **st)
{
    static char m[300];
    size_t n = (size_t)snprintf(m, sizeof m, "1;");
    memset(m + n, 'e', 99); /* ";" + 99 = 100 bytes of extension */
    n += 99;
    n += (size_t)snprintf(m + n, sizeof m - n, "\r\nx\r\n0\r\n\r\n");
    char out[16];
    size_t ol, end;
    h1_chunked_init(&C);
    C.max_ext_bytes = 100;
    size_t used, dl;
    const char *d;
    assert_int_equal(h1_chunked_decode(&C, m, n, &used, &d, &dl), H1_CHUNK_DATA);
    h1_chunked_init(&C);
    C.max_ext_bytes = 99;
    assert_int_equal(h1_chunked_decode(&C, m, n, &used, &d, &dl), H1_ERR_CHUNK_EXT);
    /* the default limit (4096) holds for a line that never ends */
    static char big[5000];
    big[0] = '1';
    big[1] = ';';
    memset(big + 2, 'e', sizeof big - 2);
    assert_int_equal(decode_whole(big, sizeof big, out, &ol, &end, &C), H1_ERR_CHUNK_EXT);
    assert_int_equal(h1_error_status(H1_ERR_CHUNK_EXT), 400);
}

static void test_chunked_size_invalid(void **st)
{
    static const char *bad[] = {
        "\r\n\r\n",                  "g\r\n",        " 5\r\nhello\r\n0\r\n\r\n",
        "5 \r\nhello\r\n0\r\n\r\n",  "+5\r\n",       "0x5\r\nhello\r\n0\r\n\r\n",
        "-1\r\n",                    "5\nhello\r\n0\r\n\r\n", "5\rhello\r\n",
        "00000000000000005\r\nhello\r\n0\r\n\r\n", /* 17 digits */
        "8000000000000000\r\n",      "ffffffffffffffff\r\n", "10000000000000000\r\n",
        ";a\r\n",                    "5;a\nhello\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = dec(bad[i]);
        if (rc != H1_ERR_CHUNK_SIZE) fail_msg("case %zu: %d", i, rc);
    }
    /* the largest size is fine (then more data is needed) */
    assert_int_equal(dec("7fffffffffffffff\r\nabc"), H1_CHUNK_NEED_MORE);
    assert_true(C.remaining == (uint64_t)INT64_MAX - 3);
    assert_int_equal(dec("0000000000000005\r\nhello\r\n0\r\n\r\n"), H1_CHUNK_DONE);
}

static void test_chunked_crlf_after_data(void **st)
{
    assert_int_equal(dec("5\r\nhelloX\r\n0\r\n\r\n"), H1_ERR_CHUNK_CRLF);
    assert_int_equal(dec("5\r\nhello\n0\r\n\r\n"), H1_ERR_CHUNK_CRLF);
    assert_int_equal(dec("5\r\nhello\rX0\r\n\r\n"), H1_ERR_CHUNK_CRLF);
    assert_int_equal(dec("5\r\nhello\r\r\n0\r\n\r\n"), H1_ERR_CHUNK_CRLF);
    assert_int_equal(dec("5\r\nhello world\r\n0\r\n\r\n"), H1_ERR_CHUNK_CRLF);
}

static void test_chunked_partial_data(void **st)
{
    size_t used, dl;
    const char *d;
    const char *m = "a\r\n01234";
    h1_chunked_init(&C);
    assert_int_equal(h1_chunked_decode(&C, m, strlen(m), &used, &d, &dl), H1_CHUNK_DATA);
    assert_ptr_equal(d, m + 3);
    assert_int_equal(dl, 5);
    assert_int_equal(used, 8);
    assert_int_equal(C.remaining, 5);
    assert_int_equal(h1_chunked_decode(&C, "", 0, &used, &d, &dl), H1_CHUNK_NEED_MORE);
    assert_int_equal(used, 0);
    assert_int_equal(h1_chunked_decode(&C, "56789\r\n", 7, &used, &d, &dl), H1_CHUNK_DATA);
    assert_int_equal(dl, 5);
    assert_int_equal(used, 5);
    assert_int_equal(h1_chunked_decode(&C, "\r\n", 2, &used, &d, &dl), H1_CHUNK_NEED_MORE);
    assert_int_equal(used, 2);
}

static void test_chunked_size_line_not_consumed(void **st)
{
    size_t used, dl;
    const char *d;
    h1_chunked_init(&C);
    assert_int_equal(h1_chunked_decode(&C, "1f;a=\"b", 7, &used, &d, &dl), H1_CHUNK_NEED_MORE);
    assert_int_equal(used, 0);
    assert_int_equal(C.line_bytes, 7);
    assert_int_equal(h1_chunked_decode(&C, "1f;a=\"b\"\r", 9, &used, &d, &dl), H1_CHUNK_NEED_MORE);
    assert_int_equal(used, 0);
    assert_int_equal(h1_chunked_decode(&C, "1f;a=\"b\"\r\n", 10, &used, &d, &dl), H1_CHUNK_NEED_MORE);
    assert_int_equal(used, 10);
    assert_int_equal(C.remaining, 31);
}

static void test_chunked_trailers(void **st)
{
    const char *m = "3\r\nabc\r\n0\r\nX-Sum: 123\r\ngrpc-status:  0 \r\n\r\nNEXT";
    char out[16];
    size_t ol, end;
    assert_int_equal(decode_whole(m, strlen(m), out, &ol, &end, &C), H1_CHUNK_DONE);
    assert_int_equal(end, strlen(m) - 4);
    assert_int_equal(C.ntrailers, 2);
    assert_true(str_is(C.trailers[0].name, "X-Sum"));
    assert_true(str_is(C.trailers[1].value, "0"));
    const char *raw = m + end - C.trailer_len;
    assert_memory_equal(raw, "X-Sum: 123\r\ngrpc-status:  0 \r\n", C.trailer_len - 2);
    assert_int_equal(C.trailer_len, strlen("X-Sum: 123\r\ngrpc-status:  0 \r\n\r\n"));
}

static void test_chunked_trailer_waits_whole(void **st)
{
    size_t used, dl;
    const char *d;
    const char *m = "0\r\nA: 1\r\nB: 2\r\n\r\n";
    h1_chunked_init(&C);
    assert_int_equal(h1_chunked_decode(&C, m, 10, &used, &d, &dl), H1_CHUNK_NEED_MORE);
    assert_int_equal(used, 3); /* the last-chunk line, not the trailer */
    for (size_t len = 7; len < strlen(m) - 3; len++) {
        assert_int_equal(h1_chunked_decode(&C, m + 3, len, &used, &d, &dl), H1_CHUNK_NEED_MORE);
        assert_int_equal(used, 0);
    }
    assert_int_equal(h1_chunked_decode(&C, m + 3, strlen(m) - 3, &used, &d, &dl), H1_CHUNK_DONE);
    assert_int_equal(used, strlen(m) - 3);
    assert_int_equal(C.ntrailers, 2);
    assert_ptr_equal(C.trailers[0].name.p, m + 3);

    /* the CR of an empty trailer section alone cannot be judged yet */
    h1_chunked_init(&C);
    assert_int_equal(h1_chunked_decode(&C, "0\r\n\r", 4, &used, &d, &dl), H1_CHUNK_NEED_MORE);
    assert_int_equal(used, 3);
    assert_int_equal(h1_chunked_decode(&C, "\r\n", 2, &used, &d, &dl), H1_CHUNK_DONE);
    assert_int_equal(used, 2);
    assert_int_equal(C.trailer_len, 2);
}

static void test_chunked_trailer_errors(void **st)
{
    assert_int_equal(dec("0\r\nX: a\nY: b\r\n\r\n"), H1_ERR_TRAILER); /* bare LF */
    assert_int_equal(dec("0\r\nX: a\r\n\n"), H1_ERR_TRAILER);
    assert_int_equal(dec("0\r\n\n"), H1_ERR_TRAILER);
    assert_int_equal(dec("0\r\n folded: x\r\n\r\n"), H1_ERR_TRAILER);
    assert_int_equal(dec("0\r\nX : a\r\n\r\n"), H1_ERR_TRAILER);
    assert_int_equal(dec("0\r\nX: \x01\r\n\r\n"), H1_ERR_TRAILER);
    assert_int_equal(dec("0\r\nX: a\rb\r\n\r\n"), H1_ERR_TRAILER);
    assert_int_equal(dec("0\r\nContent-Length: 5\r\n\r\n"), H1_ERR_TRAILER);
    assert_int_equal(dec("0\r\nTransfer-Encoding: chunked\r\n\r\n"), H1_ERR_TRAILER);
    assert_int_equal(dec("0\r\nHost: evil\r\n\r\n"), H1_ERR_TRAILER);
    assert_int_equal(dec("0\r\n\rX\r\n\r\n"), H1_ERR_TRAILER);
    assert_int_equal(dec("0\r\n\rX"), H1_CHUNK_NEED_MORE); /* judged once the section ends */
}

static void test_chunked_trailer_limits(void **st)
{
    static char m[20000];
    size_t n = (size_t)snprintf(m, sizeof m, "0\r\n");
    for (int i = 0; i < H1_MAX_HEADERS / 4; i++) n += (size_t)snprintf(m + n, sizeof m - n, "T%d: v\r\n", i);
    memcpy(m + n, "\r\n", 2);
    char out[16];
    size_t ol, end;
    assert_int_equal(decode_whole(m, n + 2, out, &ol, &end, &C), H1_CHUNK_DONE);
    assert_int_equal(C.ntrailers, H1_MAX_HEADERS / 4);
    n += (size_t)snprintf(m + n, sizeof m - n, "Z: v\r\n\r\n");
    assert_int_equal(decode_whole(m, n, out, &ol, &end, &C), H1_ERR_TRAILER);

    /* size: a section that never ends fails once past the limit */
    n = (size_t)snprintf(m, sizeof m, "0\r\nX: ");
    memset(m + n, 'a', sizeof m - n);
    h1_chunked_init(&C);
    C.max_trailer_bytes = 100;
    size_t used, dl;
    const char *d;
    assert_int_equal(h1_chunked_decode(&C, m, 103, &used, &d, &dl), H1_CHUNK_NEED_MORE);
    assert_int_equal(h1_chunked_decode(&C, m + 3, 100, &used, &d, &dl), H1_CHUNK_NEED_MORE);
    assert_int_equal(h1_chunked_decode(&C, m + 3, 101, &used, &d, &dl), H1_ERR_TRAILER);
    /* a complete section bigger than the limit fails too */
    n = (size_t)snprintf(m, sizeof m, "0\r\nX: %0200d\r\n\r\n", 1);
    h1_chunked_init(&C);
    C.max_trailer_bytes = 100;
    assert_int_equal(h1_chunked_decode(&C, m, n, &used, &d, &dl), H1_ERR_TRAILER);
}

/* The same message split every possible way decodes to the same body and
 * ends at the same byte. */
static void test_chunked_every_split(void **st)
{
    const char *m = "4;ext=\"q;x\"\r\nWiki\r\n5\r\npedia\r\nE;a=b;c\r\n in\r\n\r\nchunks.\r\n"
                    "10\r\n0123456789abcdef\r\n0\r\nExpires: never\r\nX: y\r\n\r\nTAIL";
    const char *want = "Wikipedia in\r\n\r\nchunks.0123456789abcdef";
    size_t n = strlen(m);
    char out[256];
    size_t ol, end, end0;
    assert_int_equal(decode_whole(m, n, out, &ol, &end0, &C), H1_CHUNK_DONE);
    assert_int_equal(ol, strlen(want));
    assert_memory_equal(out, want, ol);
    assert_int_equal(end0, n - 4);

    unsigned one = 1;
    assert_int_equal(feed_chunked(m, n, &one, out, &ol, &end, &C), H1_CHUNK_DONE);
    assert_int_equal(ol, strlen(want));
    assert_memory_equal(out, want, ol);
    assert_int_equal(end, end0);
    assert_int_equal(C.ntrailers, 2);
    assert_true(str_is(C.trailers[0].value, "never"));

    /* two pieces, split at every byte */
    for (size_t k = 0; k <= n; k++) {
        struct h1_chunked c;
        size_t off = 0, total = 0, avail = k;
        int rc;
        h1_chunked_init(&c);
        for (;;) {
            const char *d;
            size_t dl, used;
            rc = h1_chunked_decode(&c, m + off, avail - off, &used, &d, &dl);
            if (rc == H1_CHUNK_DATA) {
                assert_memory_equal(d, want + total, dl);
                total += dl;
            }
            off += used;
            if (rc == H1_CHUNK_NEED_MORE && avail < n) avail = n;
            else if (rc != H1_CHUNK_DATA) break;
        }
        assert_int_equal(rc, H1_CHUNK_DONE);
        assert_int_equal(total, strlen(want));
        assert_int_equal(off, end0);
    }

    /* random piece sizes */
    for (unsigned seed = 2; seed < 200; seed++) {
        unsigned s = seed;
        assert_int_equal(feed_chunked(m, n, &s, out, &ol, &end, &C), H1_CHUNK_DONE);
        assert_int_equal(ol, strlen(want));
        assert_memory_equal(out, want, ol);
        assert_int_equal(end, end0);
    }
}

/* Byte-by-byte and whole feeding give the same error at the same place. */
static void test_chunked_errors_split_independent(void **st)
{
    static const char *bad[] = {
        "5\r\nhelloX", "5;a=\"x\x01", "5;a b", "12345678901234567\r\n", "5\r\nhello\r\n0\r\nX : y\r\n\r\n",
        "5\nhello",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char out[64];
        size_t ol, e1, e2;
        unsigned one = 1;
        int whole = decode_whole(bad[i], strlen(bad[i]), out, &ol, &e1, &C);
        int split = feed_chunked(bad[i], strlen(bad[i]), &one, out, &ol, &e2, &C);
        assert_true(whole < 0);
        assert_int_equal(whole, split);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_class_table),
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_lf_only_lines),
        cmocka_unit_test(test_leading_empty_line),
        cmocka_unit_test(test_version_minor),
        cmocka_unit_test(test_version_unsupported),
        cmocka_unit_test(test_version_malformed),
        cmocka_unit_test(test_method_not_token),
        cmocka_unit_test(test_single_sp_separators),
        cmocka_unit_test(test_target_chars),
        cmocka_unit_test(test_absolute_form_target),
        cmocka_unit_test(test_target_too_long),
        cmocka_unit_test(test_bare_cr),
        cmocka_unit_test(test_obs_fold),
        cmocka_unit_test(test_space_before_colon),
        cmocka_unit_test(test_header_name),
        cmocka_unit_test(test_header_value_ctl),
        cmocka_unit_test(test_obs_text_value),
        cmocka_unit_test(test_empty_and_trimmed_value),
        cmocka_unit_test(test_too_many_headers),
        cmocka_unit_test(test_head_too_large),
        cmocka_unit_test(test_cl_zero),
        cmocka_unit_test(test_cl_values),
        cmocka_unit_test(test_cl_invalid),
        cmocka_unit_test(test_cl_big),
        cmocka_unit_test(test_cl_list_and_duplicate),
        cmocka_unit_test(test_cl_and_te),
        cmocka_unit_test(test_te_chunked),
        cmocka_unit_test(test_te_http10),
        cmocka_unit_test(test_te_not_chunked_last),
        cmocka_unit_test(test_te_malformed),
        cmocka_unit_test(test_te_unknown),
        cmocka_unit_test(test_no_body),
        cmocka_unit_test(test_host_missing),
        cmocka_unit_test(test_host_duplicate),
        cmocka_unit_test(test_host_valid),
        cmocka_unit_test(test_host_invalid),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_http10_keep_alive),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_upgrade),
        cmocka_unit_test(test_incremental_matches_whole),
        cmocka_unit_test(test_pipelined_bytes_ignored),
        cmocka_unit_test(test_no_rescan),
        cmocka_unit_test(test_response_cl),
        cmocka_unit_test(test_response_chunked),
        cmocka_unit_test(test_response_until_close),
        cmocka_unit_test(test_response_no_body_statuses),
        cmocka_unit_test(test_response_framing_errors),
        cmocka_unit_test(test_response_status_line),
        cmocka_unit_test(test_response_fields),
        cmocka_unit_test(test_response_keep_alive),
        cmocka_unit_test(test_helpers),
        cmocka_unit_test(test_error_codes),
        cmocka_unit_test(test_default_limits),
        cmocka_unit_test(test_chunked_basic),
        cmocka_unit_test(test_chunked_done_is_sticky),
        cmocka_unit_test(test_chunked_error_is_sticky),
        cmocka_unit_test(test_chunked_extensions),
        cmocka_unit_test(test_chunked_ext_malformed),
        cmocka_unit_test(test_chunked_ext_too_long),
        cmocka_unit_test(test_chunked_size_invalid),
        cmocka_unit_test(test_chunked_crlf_after_data),
        cmocka_unit_test(test_chunked_partial_data),
        cmocka_unit_test(test_chunked_size_line_not_consumed),
        cmocka_unit_test(test_chunked_trailers),
        cmocka_unit_test(test_chunked_trailer_waits_whole),
        cmocka_unit_test(test_chunked_trailer_errors),
        cmocka_unit_test(test_chunked_trailer_limits),
        cmocka_unit_test(test_chunked_every_split),
        cmocka_unit_test(test_chunked_errors_split_independent),
    };
    return cmocka_run_group_tests_name("h1", tests, NULL, NULL);
}
