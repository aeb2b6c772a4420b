/* jsonpath_test — path syntax (accepted forms, each error with its offset)
 * and the set automaton: member, index, wildcard and descendant steps,
 * several paths at once, dead states, and the position limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "mirror/jsonpath.h"

struct seg {
    const char *key; /* NULL: array index */
    uint64_t index;
};

/* Whether `path` selects the value at the end of `segs` (n steps from the root). */
static bool selects(const char *path, const struct seg *segs, size_t n)
{
    struct jsonpath_set *s = jsonpath_set_new();
    size_t off;
    char why[128];
    assert_int_equal(jsonpath_set_add(s, path, &off, why, sizeof why), 0);
    struct jsonpath_state st = s->root, next;
    for (size_t i = 0; i < n; i++) {
        if (segs[i].key) jsonpath_child_key(s, &st, segs[i].key, strlen(segs[i].key), &next);
        else jsonpath_child_index(s, &st, segs[i].index, &next);
        st = next;
    }
    bool r = jsonpath_selected(s, &st);
    jsonpath_set_free(s);
    return r;
}

#define K(k) {k, 0}
#define I(i) {NULL, i}
#define SEL(path, ...) selects(path, (const struct seg[]){__VA_ARGS__}, \
                               sizeof((const struct seg[]){__VA_ARGS__}) / sizeof(struct seg))

static void test_steps(void **state)
{
    assert_true(SEL("$.a.b", K("a"), K("b")));
    assert_false(SEL("$.a.b", K("a")));
    assert_false(SEL("$.a.b", K("a"), K("b"), K("c")));
    assert_false(SEL("$.a.b", K("b"), K("a")));
    assert_false(SEL("$.a.b", K("A"), K("b")));          /* keys are case-sensitive */
    assert_true(SEL("$['a b'].c", K("a b"), K("c")));
    assert_true(SEL("$[\"q'\\\"\"]", K("q'\"")));
    assert_true(SEL("$.a[2]", K("a"), I(2)));
    assert_false(SEL("$.a[2]", K("a"), I(1)));
    assert_false(SEL("$.a[2]", K("a"), K("2")));          /* an index is not a key */
    assert_true(SEL("$.a[*].x", K("a"), I(7), K("x")));
    assert_true(SEL("$.*.x", K("anything"), K("x")));
    assert_true(SEL("$.*.x", I(0), K("x")));
    assert_true(SEL("$..x", K("x")));
    assert_true(SEL("$..x", K("a"), I(3), K("b"), K("x")));
    assert_false(SEL("$..x", K("a"), K("y")));
    assert_true(SEL("$..x", K("x"), K("x")));             /* and x inside x */
    assert_true(SEL("$.a..b.c", K("a"), K("q"), K("b"), K("c")));
    assert_false(SEL("$.a..b.c", K("q"), K("b"), K("c")));
    assert_true(SEL("$..[1]", K("a"), I(1)));
    assert_true(SEL("$..*", K("a")));
    assert_true(SEL("$", I(0)) == false);
    assert_true(selects("$", NULL, 0));
    assert_true(SEL("$.caf\xc3\xa9", K("caf\xc3\xa9")));
    assert_true(SEL("$.a-b_c$", K("a-b_c$")));
}

static void test_set_of_paths(void **state)
{
    struct jsonpath_set *s = jsonpath_set_new();
    size_t off;
    char why[128];
    assert_int_equal(jsonpath_set_add(s, "$.user.email", &off, why, sizeof why), 0);
    assert_int_equal(jsonpath_set_add(s, "$..ssn", &off, why, sizeof why), 0);
    assert_int_equal(jsonpath_set_add(s, "$.cards[0]", &off, why, sizeof why), 0);
    assert_int_equal(s->npaths, 3);
    struct jsonpath_state a, b, c;
    jsonpath_child_key(s, &s->root, "user", 4, &a);
    assert_false(jsonpath_selected(s, &a));
    assert_false(jsonpath_dead(s, &a));
    jsonpath_child_key(s, &a, "email", 5, &b);
    assert_true(jsonpath_selected(s, &b));
    jsonpath_child_key(s, &a, "ssn", 3, &b);
    assert_true(jsonpath_selected(s, &b));
    jsonpath_child_key(s, &s->root, "cards", 5, &a);
    jsonpath_child_index(s, &a, 0, &b);
    assert_true(jsonpath_selected(s, &b));
    jsonpath_child_index(s, &a, 1, &b);
    assert_false(jsonpath_selected(s, &b));
    assert_false(jsonpath_dead(s, &b)); /* $..ssn may still match below */
    jsonpath_set_free(s);

    s = jsonpath_set_new();
    assert_int_equal(jsonpath_set_add(s, "$.a.b", &off, why, sizeof why), 0);
    jsonpath_child_key(s, &s->root, "x", 1, &a);
    assert_true(jsonpath_dead(s, &a));
    jsonpath_child_key(s, &s->root, "a", 1, &a);
    jsonpath_child_key(s, &a, "b", 1, &b);
    assert_true(jsonpath_selected(s, &b));
    assert_true(jsonpath_dead(s, &b)); /* selected, nothing below it */
    jsonpath_child_key(s, &b, "c", 1, &c);
    assert_false(jsonpath_selected(s, &c));
    jsonpath_set_free(s);
    jsonpath_set_free(NULL);
}

static void expect_error(const char *path, size_t want_off, const char *want_why)
{
    struct jsonpath_set *s = jsonpath_set_new();
    size_t off = 999;
    char why[128] = "";
    int rc = jsonpath_set_add(s, path, &off, why, sizeof why);
    jsonpath_set_free(s);
    if (rc != -1 || off != want_off || !strstr(why, want_why)) {
        print_error("path %s: rc %d off %zu why \"%s\" (wanted %zu \"%s\")\n", path, rc, off, why,
                    want_off, want_why);
        fail();
    }
}

static void test_syntax_errors(void **state)
{
    expect_error("password", 0, "starts with \"$\"");
    expect_error("", 0, "starts with \"$\"");
    expect_error("$.", 2, "expected a name");
    expect_error("$..", 3, "expected a name");
    expect_error("$...a", 3, "three dots");
    expect_error("$.a b", 3, "expected \".\" or \"[\"");
    expect_error("$.a.b c", 5, "expected \".\" or \"[\"");
    expect_error("$.a[", 4, "expected an index");
    expect_error("$.a[1", 5, "expected \"]\"");
    expect_error("$.a[x]", 4, "expected an index");
    expect_error("$.a[-1]", 4, "negative");
    expect_error("$.a[?(@.x)]", 4, "filters");
    expect_error("$.a[01]", 4, "leading zero");
    expect_error("$.a['b]", 4, "unterminated");
    expect_error("$.a['b\\n']", 6, "unknown escape");
    expect_error("$.a.['b']", 4, "not $.a.['b']");
    expect_error("$.%", 2, "quote unusual keys");
    expect_error("$a", 1, "expected \".\" or \"[\"");
    expect_error("$.a[99999999999999999999]", 4, "too large");
}

static void test_limits(void **state)
{
    struct jsonpath_set *s = jsonpath_set_new();
    size_t off;
    char why[128];
    char path[1024] = "$";
    for (int i = 0; i < 64; i++) strcat(path, ".a");
    assert_int_equal(jsonpath_set_add(s, path, &off, why, sizeof why), 0);
    strcat(path, ".a");
    assert_int_equal(jsonpath_set_add(s, path, &off, why, sizeof why), -1);
    assert_non_null(strstr(why, "too many steps"));
    /* 256 positions in all: 65 each for 64-step paths, so the fourth is refused */
    path[strlen(path) - 2] = 0;
    assert_int_equal(jsonpath_set_add(s, path, &off, why, sizeof why), 0);
    assert_int_equal(jsonpath_set_add(s, path, &off, why, sizeof why), 0);
    assert_int_equal(jsonpath_set_add(s, path, &off, why, sizeof why), -1);
    assert_non_null(strstr(why, "too many JSON paths"));
    assert_int_equal(s->npaths, 3);
    /* deep states still step correctly across word boundaries */
    struct jsonpath_state st = s->root, next;
    for (int i = 0; i < 64; i++) {
        jsonpath_child_key(s, &st, "a", 1, &next);
        st = next;
    }
    assert_true(jsonpath_selected(s, &st));
    jsonpath_set_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_steps),
        cmocka_unit_test(test_set_of_paths),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
