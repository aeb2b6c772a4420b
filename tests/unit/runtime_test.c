/* runtime_test — the live value table: registration and defaults, every form
 * the admin API accepts ("5", "5%", "0.5", "0", "100") and rejects (the value
 * then stays as it was), clearing an override, an override outliving a reload
 * that changes the default, the table's bounds, and the JSON rendering. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/config.h"
#include "core/log.h"
#include "core/runtime.h"
#include "core/strbuf.h"

static int setup(void **state)
{
    log_set_level(LOG_ERROR); /* runtime_set logs every change at info */
    runtime_reset();
    return 0;
}

/* runtime_set, with the error text checked: empty on success, naming the key
 * on failure. Returns runtime_set's result. */
static int set(const char *key, const char *value)
{
    struct strbuf err = STRBUF_INIT;
    int rc = runtime_set(key, value, &err);
    if (rc == 0) {
        assert_int_equal(err.len, 0);
    } else {
        assert_int_equal(rc, -1);
        assert_non_null(err.data);
        if (!strstr(err.data, key)) print_error("error \"%s\" does not name %s\n", err.data, key);
        assert_non_null(strstr(err.data, key));
    }
    strbuf_free(&err);
    return rc;
}

static void test_register_default(void **state)
{
    struct runtime_entry *e = runtime_register("mirror.r.s", 250000);
    assert_non_null(e);
    assert_string_equal(e->key, "mirror.r.s");
    assert_int_equal(runtime_ppm(e), 250000);
    assert_int_equal(e->default_ppm, 250000);
    assert_false(e->overridden);
    /* The same key is the same entry: workers' pointers stay valid. */
    struct runtime_entry *again = runtime_register("mirror.r.s", 250000);
    assert_ptr_equal(again, e);
    struct runtime_entry *other = runtime_register("mirror.r.t", 0);
    assert_ptr_not_equal(other, e);
    assert_int_equal(runtime_ppm(other), 0);
    assert_int_equal(runtime_ppm(e), 250000);
}

static void test_reregister_without_override_takes_new_default(void **state)
{
    struct runtime_entry *e = runtime_register("k", CFG_PPM);
    assert_ptr_equal(runtime_register("k", 30000), e);
    assert_int_equal(runtime_ppm(e), 30000);
    assert_int_equal(e->default_ppm, 30000);
}

static void test_set_forms(void **state)
{
    static const struct {
        const char *value;
        uint32_t ppm;
    } cases[] = {
        {"5", 50000},     {"5%", 50000},  {"0.5", 5000},   {"0.5%", 5000},
        {"0", 0},         {"0%", 0},      {"100", CFG_PPM}, {"100%", CFG_PPM},
        {"12.25", 122500}, {"0.0001", 1}, {"100.0", CFG_PPM}, {"007", 70000},
    };
    struct runtime_entry *e = runtime_register("k", 777);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        atomic_store(&e->ppm, 777); /* so a no-op cannot pass for the right value */
        if (set("k", cases[i].value) != 0) print_error("\"%s\" rejected\n", cases[i].value);
        assert_int_equal(runtime_ppm(e), cases[i].ppm);
        assert_true(e->overridden);
        assert_int_equal(e->default_ppm, 777); /* the config's value is kept aside */
    }
}

static void test_set_invalid_keeps_value(void **state)
{
    static const char *const bad[] = {
        "abc", "101", "-1", "100.0001", "5%%", "%", "5x", " 5", "5 ", "1e2", ".5",
        "5.", "0x10", "1000", "99999999999999999999", "50%5", "-0", "0.00005",
    };
    struct runtime_entry *e = runtime_register("mirror.a.b", 100000);
    assert_int_equal(set("mirror.a.b", "20"), 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (set("mirror.a.b", bad[i]) != -1) print_error("\"%s\" accepted\n", bad[i]);
        assert_int_equal(runtime_ppm(e), 200000);
        assert_true(e->overridden);
    }
    /* Rejecting a value also leaves a non-overridden key alone. */
    struct runtime_entry *f = runtime_register("mirror.c.d", 100000);
    assert_int_equal(set("mirror.c.d", "abc"), -1);
    assert_int_equal(runtime_ppm(f), 100000);
    assert_false(f->overridden);
}

static void test_set_too_long(void **state)
{
    struct runtime_entry *e = runtime_register("k", 10);
    char v[200];
    memset(v, '0', sizeof v - 2);
    v[sizeof v - 2] = '5';
    v[sizeof v - 1] = '\0'; /* "000…05": a fine number, but longer than anyone types */
    assert_int_equal(set("k", v), -1);
    assert_int_equal(runtime_ppm(e), 10);
}

static void test_set_unknown_key(void **state)
{
    struct runtime_entry *e = runtime_register("mirror.known", 10);
    assert_int_equal(set("mirror.unknown", "5"), -1);
    assert_int_equal(set("mirror.know", "5"), -1); /* no prefix matching */
    assert_int_equal(set("", "5"), -1);
    assert_int_equal(runtime_ppm(e), 10);
}

static void test_empty_resets_to_default(void **state)
{
    struct runtime_entry *e = runtime_register("k", 50000);
    assert_int_equal(set("k", "0"), 0);
    assert_int_equal(runtime_ppm(e), 0);
    assert_int_equal(set("k", ""), 0);
    assert_int_equal(runtime_ppm(e), 50000);
    assert_false(e->overridden);
    /* Clearing a key that has no override is fine and changes nothing. */
    assert_int_equal(set("k", ""), 0);
    assert_int_equal(runtime_ppm(e), 50000);
}

static void test_override_survives_reregister(void **state)
{
    struct runtime_entry *e = runtime_register("mirror.r.s", CFG_PPM);
    assert_int_equal(set("mirror.r.s", "5"), 0);
    /* A reload brings a new configured value: the operator's choice stays. */
    assert_ptr_equal(runtime_register("mirror.r.s", 200000), e);
    assert_int_equal(runtime_ppm(e), 50000);
    assert_true(e->overridden);
    assert_int_equal(e->default_ppm, 200000);
    /* Clearing it now falls back to the new default, not the first one. */
    assert_int_equal(set("mirror.r.s", ""), 0);
    assert_int_equal(runtime_ppm(e), 200000);
    /* And without an override the next reload's value applies at once. */
    runtime_register("mirror.r.s", 10000);
    assert_int_equal(runtime_ppm(e), 10000);
}

static void test_table_bounds(void **state)
{
    char key[160];
    struct runtime_entry *first = NULL;
    for (int i = 0; i < RUNTIME_MAX_KEYS; i++) {
        snprintf(key, sizeof key, "key.%d", i);
        struct runtime_entry *e = runtime_register(key, (uint32_t)i);
        assert_non_null(e);
        if (!first) first = e;
    }
    assert_null(runtime_register("one.too.many", 1));
    /* Existing keys still refresh when the table is full. */
    assert_ptr_equal(runtime_register("key.0", 42), first);
    assert_int_equal(runtime_ppm(first), 42);
    assert_int_equal(set("one.too.many", "5"), -1);
    runtime_reset();
    assert_non_null(runtime_register("one.too.many", 1));
}

static void test_key_length(void **state)
{
    char key[sizeof(((struct runtime_entry *)0)->key) + 8];
    size_t max = sizeof(((struct runtime_entry *)0)->key) - 1;
    memset(key, 'k', sizeof key);
    key[max] = '\0'; /* the longest key that fits the entry with its NUL */
    struct runtime_entry *e = runtime_register(key, 5);
    assert_non_null(e);
    assert_string_equal(e->key, key);
    key[max] = 'k';
    key[max + 1] = '\0';
    /* Truncating would alias two keys; a longer key is refused instead. */
    assert_null(runtime_register(key, 5));
}

/* Renders the table and parses it; the caller json_decref()s. */
static json_t *render(void)
{
    struct strbuf out = STRBUF_INIT;
    runtime_render_json(&out);
    json_error_t jerr;
    json_t *j = json_loadb(out.data, out.len, 0, &jerr);
    if (!j) print_error("bad JSON (%s): %s\n", jerr.text, out.data);
    strbuf_free(&out);
    assert_non_null(j);
    assert_true(json_is_object(j));
    return j;
}

static double num(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    assert_non_null(v);
    assert_true(json_is_number(v));
    return json_number_value(v);
}

static void test_render_json(void **state)
{
    json_t *j = render();
    assert_int_equal(json_object_size(j), 0);
    json_decref(j);

    runtime_register("mirror.all.s", CFG_PPM);
    runtime_register("mirror.half.s", 5000);
    runtime_register("mirror.none.s", 0);
    runtime_register("odd\"key\\", 1); /* rendered escaped, still valid JSON */
    assert_int_equal(set("mirror.none.s", "12.5"), 0);
    j = render();
    assert_int_equal(json_object_size(j), 4);
    assert_true(num(j, "mirror.all.s") == 100.0);
    assert_true(num(j, "mirror.half.s") == 0.5);
    assert_true(num(j, "mirror.none.s") == 12.5); /* the value in force, not the default */
    assert_true(num(j, "odd\"key\\") == 0.0001);
    json_decref(j);
}

#define T(f) cmocka_unit_test_setup(f, setup)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_register_default),
        T(test_reregister_without_override_takes_new_default),
        T(test_set_forms),
        T(test_set_invalid_keeps_value),
        T(test_set_too_long),
        T(test_set_unknown_key),
        T(test_empty_resets_to_default),
        T(test_override_survives_reregister),
        T(test_table_bounds),
        T(test_key_length),
        T(test_render_json),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    runtime_reset();
    return rc;
}
