/* detect_test — each detector on positives in context and on near misses
 * that a careless pattern would take (wrong checksum, reserved ranges, one
 * digit too many or too few, a letter glued on, version strings), plus the
 * scan's own rules: leftmost first, only the kinds asked for, linear. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mirror/detect.h"

/* The text after masking kinds `mask`. Static storage: one at a time. */
static const char *masked(unsigned mask, const char *s)
{
    static struct strbuf sb = STRBUF_INIT;
    strbuf_reset(&sb);
    detect_mask(mask, s, strlen(s), &sb);
    strbuf_append(&sb, "", 0);
    return sb.data;
}

static void expect_masked(unsigned mask, const char *in, const char *want)
{
    const char *got = masked(mask, in);
    if (strcmp(got, want) != 0) {
        print_error("input   %s\nexpected %s\ngot      %s\n", in, want, got);
        fail();
    }
}

/* The input must come back unchanged with every detector on. */
static void expect_clean(const char *in)
{
    expect_masked(DETECT_ALL, in, in);
}

static void test_names(void **state)
{
    assert_int_equal(detect_from_name("email"), DETECT_EMAIL);
    assert_int_equal(detect_from_name("credit_card"), DETECT_CREDIT_CARD);
    assert_int_equal(detect_from_name("jwt"), DETECT_JWT);
    assert_int_equal(detect_from_name("bearer_token"), DETECT_BEARER_TOKEN);
    assert_int_equal(detect_from_name("us_ssn"), DETECT_US_SSN);
    assert_int_equal(detect_from_name("ipv4"), DETECT_IPV4);
    assert_int_equal(detect_from_name("ssn"), 0);
    assert_int_equal(detect_from_name("Email"), 0);
    assert_string_equal(detect_name(DETECT_JWT), "jwt");
    assert_string_equal(detect_name(0), "?");
}

static void test_email(void **state)
{
    expect_masked(DETECT_EMAIL, "alice@example.com", "MASKED");
    expect_masked(DETECT_EMAIL, "mail alice.smith+tag@mail.example.co.uk now", "mail MASKED now");
    expect_masked(DETECT_EMAIL, "<bob@example.org>", "<MASKED>");
    expect_masked(DETECT_EMAIL, "to: \"Carol\" carol_o'neil@ex-ample.com.", "to: \"Carol\" MASKED.");
    expect_masked(DETECT_EMAIL, "a@b.io,c@d.io", "MASKED,MASKED");
    expect_masked(DETECT_EMAIL, "x 0042@numbers.example.net", "x MASKED");
    /* a run of dots cuts the local part: what follows is still an address */
    expect_masked(DETECT_EMAIL, "foo..bar@example.com", "foo..MASKED");
    /* the domain stops at the last label that can be a TLD */
    expect_masked(DETECT_EMAIL, "dave@example.com.x1", "MASKED.x1");
    expect_clean("alice@localhost");
    expect_clean("lodash@4.17.21");
    expect_clean("a@b.c");
    expect_clean("@example.com");
    expect_clean("alice.@example.com");
    expect_clean("alice@-example.com");
    expect_clean("user@example.c0m");
    expect_clean("alice at example dot com");
}

static void test_credit_card(void **state)
{
    expect_masked(DETECT_CREDIT_CARD, "4111111111111111", "MASKED");
    expect_masked(DETECT_CREDIT_CARD, "card 4111 1111 1111 1111 exp", "card MASKED exp");
    expect_masked(DETECT_CREDIT_CARD, "4111-1111-1111-1111", "MASKED");
    expect_masked(DETECT_CREDIT_CARD, "amex=378282246310005;", "amex=MASKED;");
    expect_masked(DETECT_CREDIT_CARD, "3782 822463 10005", "MASKED");
    expect_masked(DETECT_CREDIT_CARD, "5555555555554444.", "MASKED.");
    expect_masked(DETECT_CREDIT_CARD, "4222222222222", "MASKED");           /* 13 digits */
    expect_masked(DETECT_CREDIT_CARD, "4000123412341234008", "MASKED");    /* 19 digits */
    expect_masked(DETECT_CREDIT_CARD, "[6011111111111117]", "[MASKED]");
    expect_clean("4111111111111112");       /* Luhn fails */
    expect_clean("411111111111");           /* 12 digits */
    expect_clean("41111111111111111111");   /* 20 digits: an id, not a card */
    expect_clean("x4111111111111111");      /* glued to a word */
    expect_clean("4111111111111111x");
    expect_clean("0.4111111111111111");     /* a decimal fraction */
    expect_clean("4111111111111111.5");
    expect_clean("0000000000000000");       /* passes Luhn, but no card starts with 0 */
    expect_clean("1 2 3 4 5 6 7 8 9 0 1 2 6");
    expect_clean("41 11 11 11 11 11 11 11");
    assert_true(detect_luhn("79927398713", 11));
    assert_false(detect_luhn("79927398710", 11));
    assert_true(detect_luhn("4111-1111-1111-1111", 19));
    assert_false(detect_luhn("", 0));
}

static void test_jwt(void **state)
{
    const char *jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
                      "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    char buf[512];
    expect_masked(DETECT_JWT, jwt, "MASKED");
    snprintf(buf, sizeof buf, "token=%s&x=1", jwt);
    expect_masked(DETECT_JWT, buf, "token=MASKED&x=1");
    expect_masked(DETECT_JWT, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "MASKED"); /* alg none */
    expect_clean("eyJub3QganNvbg.eyJzdWIiOiJ4In0.abc");   /* header '{"not json' */
    expect_clean("abc.def.ghi");
    expect_clean("www.example.com");
    expect_clean("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln.ZXh0cmE"); /* four parts */
    expect_clean("eyJhbGciOiJub25lIn0.e.c2ln");            /* payload too short */
    snprintf(buf, sizeof buf, "x%s", jwt);
    expect_clean(buf);
}

static void test_bearer(void **state)
{
    expect_masked(DETECT_BEARER_TOKEN, "Bearer abcDEF123456789xyz", "Bearer MASKED");
    expect_masked(DETECT_BEARER_TOKEN, "authorization: bearer mF_9.B5f-4.1JqM", "authorization: bearer MASKED");
    expect_masked(DETECT_BEARER_TOKEN, "BEARER  dGhpcyBpcyBh==", "BEARER  MASKED");
    expect_masked(DETECT_BEARER_TOKEN, "Bearer abcdefghijklmnopqrstuv", "Bearer MASKED");
    expect_clean("the bearer of bad news");
    expect_clean("Bearer short1");
    expect_clean("Bearer responsibilities");
    expect_clean("xBearer abcDEF123456789xyz");
    expect_clean("Bearer: abcDEF123456789xyz");
}

static void test_us_ssn(void **state)
{
    expect_masked(DETECT_US_SSN, "123-45-6789", "MASKED");
    expect_masked(DETECT_US_SSN, "ssn: 078-05-1120.", "ssn: MASKED.");
    expect_masked(DETECT_US_SSN, "(899-99-9999)", "(MASKED)");
    expect_clean("000-12-3456");
    expect_clean("666-12-3456");
    expect_clean("900-12-3456");
    expect_clean("999-12-3456");
    expect_clean("123-00-4567");
    expect_clean("123-45-0000");
    expect_clean("1234-56-7890");
    expect_clean("123-45-67890");
    expect_clean("123456789");
    expect_clean("555-123-45-6789");
    expect_clean("123-45-6789-1");
}

static void test_ipv4(void **state)
{
    expect_masked(DETECT_IPV4, "10.0.0.1", "MASKED");
    expect_masked(DETECT_IPV4, "client 192.168.1.254:8080 said", "client MASKED:8080 said");
    expect_masked(DETECT_IPV4, "255.255.255.255, 0.0.0.0", "MASKED, MASKED");
    expect_masked(DETECT_IPV4, "from 8.8.8.8.", "from MASKED.");
    expect_clean("256.1.1.1");
    expect_clean("1.2.3");
    expect_clean("1.2.3.4.5");
    expect_clean("01.2.3.4");
    expect_clean("v1.2.3.4");
    expect_clean("1.2.3.4a");
    expect_clean("1.2.3.1000");
}

static void test_only_requested_kinds(void **state)
{
    const char *s = "alice@example.com 4111111111111111 10.0.0.1 123-45-6789";
    expect_masked(DETECT_EMAIL, s, "MASKED 4111111111111111 10.0.0.1 123-45-6789");
    expect_masked(DETECT_IPV4 | DETECT_US_SSN, s, "alice@example.com 4111111111111111 MASKED MASKED");
    expect_masked(DETECT_ALL, s, "MASKED MASKED MASKED MASKED");
    expect_masked(0, s, s);
}

static void test_next_and_any(void **state)
{
    const char *s = "id 4111111111111111 mail bob@example.com";
    struct detect_span sp;
    assert_true(detect_next(DETECT_ALL, s, strlen(s), 0, &sp));
    assert_int_equal(sp.off, 3);
    assert_int_equal(sp.len, 16);
    assert_int_equal(sp.kind, DETECT_CREDIT_CARD);
    assert_true(detect_next(DETECT_ALL, s, strlen(s), sp.off + sp.len, &sp));
    assert_int_equal(sp.kind, DETECT_EMAIL);
    assert_int_equal(sp.off, strlen(s) - 15);
    assert_false(detect_next(DETECT_ALL, s, strlen(s), sp.off + sp.len, &sp));
    assert_true(detect_any(DETECT_EMAIL, s, strlen(s)));
    assert_false(detect_any(DETECT_JWT, s, strlen(s)));
    assert_false(detect_any(DETECT_ALL, "", 0));
    /* Bytes after n are not looked at. */
    assert_false(detect_any(DETECT_EMAIL, "alice@example.com", 10));
}

static void test_binary_and_long_input(void **state)
{
    /* Arbitrary bytes never crash and long runs stay linear. */
    size_t n = 1 << 20;
    char *s = malloc(n);
    assert_non_null(s);
    for (size_t i = 0; i < n; i++) s[i] = (char)(i * 131 + (i >> 7));
    struct strbuf out = STRBUF_INIT;
    detect_mask(DETECT_ALL, s, n, &out);
    assert_true(out.len > 0);
    memset(s, 'a', n);                 /* one enormous word */
    strbuf_reset(&out);
    assert_int_equal(detect_mask(DETECT_ALL, s, n, &out), 0);
    memset(s, '.', n);
    assert_false(detect_any(DETECT_ALL, s, n));
    for (size_t i = 0; i < n; i++) s[i] = "1.1."[i % 4]; /* dotted digits */
    assert_false(detect_any(DETECT_ALL, s, n));
    strbuf_free(&out);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_email),
        cmocka_unit_test(test_credit_card),
        cmocka_unit_test(test_jwt),
        cmocka_unit_test(test_bearer),
        cmocka_unit_test(test_us_ssn),
        cmocka_unit_test(test_ipv4),
        cmocka_unit_test(test_only_requested_kinds),
        cmocka_unit_test(test_next_and_any),
        cmocka_unit_test(test_binary_and_long_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
