/* tls_test — src/tls: the file checks behind `umbra check`, the `tls:`
 * config blocks, contexts (SNI, client certificates, verification), the
 * transport over real loopback sockets (handshake inside read/writev,
 * records gathered from iovecs, session resumption per endpoint, failures
 * counted by reason) and the plaintext-held-by-OpenSSL signal to the loop.
 * Certificates are made here with OpenSSL's API in a temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../src/tls/tls_transport.c"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "tls/tls.h"

/* ---- certificates made for the tests ---------------------------------- */

struct ident {
    X509 *x;
    EVP_PKEY *k;
    char cert[300], key[300];
};

static char dir[256];
static struct ident ca, other_ca, api, www, client, mismatch_key;

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    assert_non_null(e);
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
}

static void write_ident(struct ident *id, const char *name)
{
    snprintf(id->cert, sizeof id->cert, "%s/%s.pem", dir, name);
    snprintf(id->key, sizeof id->key, "%s/%s.key", dir, name);
    FILE *f = fopen(id->cert, "w");
    assert_non_null(f);
    PEM_write_X509(f, id->x);
    fclose(f);
    f = fopen(id->key, "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, id->k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
}

/* A P-256 key and a certificate for cn, signed by issuer (self when NULL). */
static void make_ident(struct ident *id, const char *name, const char *cn, const char *san,
                       const struct ident *issuer, bool is_ca, bool client_auth)
{
    static long serial = 1;
    id->k = EVP_EC_gen("P-256");
    assert_non_null(id->k);
    id->x = X509_new();
    X509_set_version(id->x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(id->x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(id->x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(id->x), 86400);
    X509_set_pubkey(id->x, id->k);
    X509_NAME *n = X509_get_subject_name(id->x);
    X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC, (const unsigned char *)"Umbra Tests", -1, -1, 0);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509 *iss = issuer ? issuer->x : id->x;
    X509_set_issuer_name(id->x, X509_get_subject_name(iss));
    if (is_ca) add_ext(id->x, iss, NID_basic_constraints, "critical,CA:TRUE");
    if (san) add_ext(id->x, iss, NID_subject_alt_name, san);
    if (!is_ca) add_ext(id->x, iss, NID_ext_key_usage, client_auth ? "clientAuth" : "serverAuth");
    assert_true(X509_sign(id->x, issuer ? issuer->k : id->k, EVP_sha256()) > 0);
    write_ident(id, name);
}

static void free_ident(struct ident *id)
{
    X509_free(id->x);
    EVP_PKEY_free(id->k);
}

static char *path_in_dir(const char *name)
{
    static char buf[4][512];
    static int i;
    char *p = buf[i++ % 4];
    snprintf(p, 512, "%s/%s", dir, name);
    return p;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup_all(void **state)
{
    signal(SIGPIPE, SIG_IGN); /* as server_run does: close_notify to a closed peer */
    snprintf(dir, sizeof dir, "/tmp/umbra-tls-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    make_ident(&ca, "ca", "test CA", NULL, NULL, true, false);
    make_ident(&other_ca, "other-ca", "other CA", NULL, NULL, true, false);
    make_ident(&api, "api", "api.test", "DNS:api.test,IP:127.0.0.1", &ca, false, false);
    make_ident(&www, "www", "www.test", "DNS:www.test,DNS:*.www.test", &ca, false, false);
    make_ident(&client, "client", "client1", NULL, &ca, false, true);
    make_ident(&mismatch_key, "mismatch", "x", NULL, &ca, false, false);
    write_file(path_in_dir("garbage.pem"), "hello, not PEM\n");
    FILE *f = fopen(path_in_dir("enc.key"), "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, api.k, EVP_aes_256_cbc(), NULL, 0, NULL, (void *)"secret");
    fclose(f);
    return 0;
}

static int teardown_all(void **state)
{
    struct ident *all[] = {&ca, &other_ca, &api, &www, &client, &mismatch_key};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        unlink(all[i]->cert);
        unlink(all[i]->key);
        free_ident(all[i]);
    }
    unlink(path_in_dir("garbage.pem"));
    unlink(path_in_dir("enc.key"));
    unlink(path_in_dir("ca-bundle.pem"));
    rmdir(dir);
    return 0;
}

/* ---- file checks ---------------------------------------------------- */

static void expect_fail(int rc, const char *why, const char *needle)
{
    assert_int_equal(rc, -1);
    if (!strstr(why, needle)) fail_msg("\"%s\" does not say \"%s\"", why, needle);
}

static void test_check_files(void **state)
{
    char why[400];
    assert_int_equal(tls_check_cert_file(api.cert, why, sizeof why), 0);
    assert_int_equal(tls_check_key_file(api.key, why, sizeof why), 0);
    assert_int_equal(tls_check_key_pair(api.cert, api.key, why, sizeof why), 0);
    assert_int_equal(tls_check_ca_file(ca.cert, why, sizeof why), 0);
    expect_fail(tls_check_cert_file(path_in_dir("nope.pem"), why, sizeof why), why, "cannot open");
    expect_fail(tls_check_cert_file(dir, why, sizeof why), why, "not a regular file");
    expect_fail(tls_check_cert_file(path_in_dir("garbage.pem"), why, sizeof why), why, "no PEM certificate");
    expect_fail(tls_check_cert_file(api.key, why, sizeof why), why, "no PEM certificate");
    expect_fail(tls_check_key_file(api.cert, why, sizeof why), why, "no PEM private key");
    expect_fail(tls_check_key_file(path_in_dir("enc.key"), why, sizeof why), why, "encrypted");
    expect_fail(tls_check_key_pair(api.cert, mismatch_key.key, why, sizeof why), why,
                "does not belong to the certificate");
    /* a broken second certificate in a chain is found too */
    char bundle[8192];
    FILE *f = fopen(ca.cert, "r");
    size_t n = fread(bundle, 1, sizeof bundle - 200, f);
    fclose(f);
    bundle[n] = '\0';
    strcat(bundle, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    write_file(path_in_dir("ca-bundle.pem"), bundle);
    expect_fail(tls_check_ca_file(path_in_dir("ca-bundle.pem"), why, sizeof why), why,
                "certificate 2 does not parse");
}

/* ---- config ------------------------------------------------------------ */

static struct config *load_yaml(const char *yaml, char **errors)
{
    size_t len = 0;
    FILE *f = open_memstream(errors, &len);
    config_set_resolve_names(false);
    struct config *cfg = config_load_string("t.yaml", yaml, strlen(yaml), f);
    fclose(f);
    return cfg;
}

static void test_config_tls_blocks(void **state)
{
    char yaml[8192], *errors = NULL;
    snprintf(yaml, sizeof yaml,
             "listeners:\n"
             "  - name: in\n"
             "    listen: 127.0.0.1:0\n"
             "    tls:\n"
             "      certificates:\n"
             "        - {cert: %s, key: %s}\n"
             "        - {cert: %s, key: %s}\n"
             "      alpn: [http/1.1]\n"
             "      min_version: TLSv1.3\n"
             "      client_ca: %s\n"
             "      client_subject_header: X-Client-Subject\n"
             "      ktls: true\n"
             "clusters:\n"
             "  - name: a\n"
             "    endpoints: [127.0.0.1:1]\n"
             "    tls: {ca: %s, sni: Shadow.Internal, cert: %s, key: %s, verify: false}\n"
             "  - name: b\n"
             "    endpoints: [127.0.0.1:2]\n"
             "    tls: true\n"
             "  - name: c\n"
             "    endpoints: [127.0.0.1:3]\n"
             "routes:\n"
             "  - {name: r, match: {prefix: /}, cluster: a}\n",
             api.cert, api.key, www.cert, www.key, ca.cert, ca.cert, client.cert, client.key);
    struct config *cfg = load_yaml(yaml, &errors);
    if (!cfg) fail_msg("%s", errors);
    const struct cfg_listener_tls *lt = &cfg->listeners[0].tls;
    assert_true(lt->enabled);
    assert_int_equal(lt->ncertificates, 2);
    assert_string_equal(lt->certificates[1].cert, www.cert);
    assert_int_equal(lt->nalpn, 1);
    assert_int_equal(lt->min_version, CFG_TLS_1_3);
    assert_string_equal(lt->client_ca, ca.cert);
    assert_string_equal(lt->client_subject_header, "x-client-subject");
    assert_true(lt->ktls);
    const struct cfg_cluster_tls *a = &cfg->clusters[0].tls, *b = &cfg->clusters[1].tls,
                                 *c = &cfg->clusters[2].tls;
    assert_true(a->enabled);
    assert_false(a->verify);
    assert_string_equal(a->sni, "shadow.internal");
    assert_string_equal(a->cert, client.cert);
    assert_int_equal(a->min_version, CFG_TLS_1_2);
    assert_true(b->enabled && b->verify && !b->ca && !b->cert);
    assert_false(c->enabled);
    config_free(cfg);
    free(errors);
}

static void test_config_tls_errors(void **state)
{
    char yaml[8192], *errors = NULL;
    snprintf(yaml, sizeof yaml,
             "listeners:\n"
             "  - name: in\n"
             "    listen: 127.0.0.1:0\n"
             "    tls:\n"
             "      certificates: []\n"
             "      ktls: maybe\n"
             "      client_subject_header: host\n"
             "      bogus: 1\n"
             "clusters:\n"
             "  - name: a\n"
             "    endpoints: [127.0.0.1:1]\n"
             "    tls: {key: %s, sni: \"a b\"}\n"
             "routes:\n"
             "  - {name: r, match: {prefix: /}, cluster: a}\n",
             api.key);
    struct config *cfg = load_yaml(yaml, &errors);
    assert_null(cfg);
    const char *want[] = {
        "t.yaml:5:21: listener \"in\": tls.certificates: no certificates (the list is empty)\n",
        "t.yaml:6:13: listener \"in\": tls.ktls: expected true or false, got \"maybe\"\n",
        "t.yaml:7:30: listener \"in\": tls.client_subject_header: header \"host\" is managed by umbra",
        "t.yaml:8:7: listener \"in\": tls: unknown key \"bogus\"",
        "t.yaml:12:16: cluster \"a\": tls.key: key needs cert",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(errors, want[i])) fail_msg("missing\n  %s\nin\n%s", want[i], errors);
    if (!strstr(errors, "tls.sni: bad server name")) fail_msg("no sni error in\n%s", errors);
    free(errors);
}

/* ---- contexts and connections ------------------------------------------ */

static struct cfg_tls_cert certs[2];
static struct cfg_listener listener;
static struct cfg_endpoint endpoint;
static struct cfg_cluster cluster;

static void set_listener(int ncerts, const char *client_ca, const char *header)
{
    memset(&listener, 0, sizeof listener);
    listener.name = "in";
    certs[0] = (struct cfg_tls_cert){api.cert, api.key};
    certs[1] = (struct cfg_tls_cert){www.cert, www.key};
    listener.tls = (struct cfg_listener_tls){.enabled = true, .certificates = certs,
                                             .ncertificates = (size_t)ncerts, .min_version = CFG_TLS_1_2,
                                             .client_ca = (char *)client_ca,
                                             .client_subject_header = (char *)header};
}

static void set_cluster(const char *ca_path, const char *sni, const struct ident *id)
{
    memset(&cluster, 0, sizeof cluster);
    memset(&endpoint, 0, sizeof endpoint);
    snprintf(endpoint.addr.text, sizeof endpoint.addr.text, "127.0.0.1:443");
    cluster.name = "up";
    cluster.endpoints = &endpoint;
    cluster.nendpoints = 1;
    cluster.tls = (struct cfg_cluster_tls){.enabled = true, .ca = (char *)ca_path, .sni = (char *)sni,
                                           .verify = true, .min_version = CFG_TLS_1_2};
    if (id) {
        cluster.tls.cert = (char *)id->cert;
        cluster.tls.key = (char *)id->key;
    }
}

/* A connected pair of non-blocking loopback TCP sockets. */
static void tcp_pair(int *a, int *b)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    assert_int_equal(bind(l, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(l, 1), 0);
    getsockname(l, (struct sockaddr *)&sin, &len);
    *a = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(*a, (struct sockaddr *)&sin, sizeof sin), 0);
    *b = accept(l, NULL, NULL);
    assert_true(*b >= 0);
    close(l);
    int one = 1;
    setsockopt(*a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(*b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(*a, F_SETFL, O_NONBLOCK);
    fcntl(*b, F_SETFL, O_NONBLOCK);
}

struct pair {
    struct transport cli, srv;
    int cli_rc;      /* tls_handshake on the client: 0, -EAGAIN or -EPROTO */
    ssize_t srv_rc;  /* the server's last read */
};

/* Runs both handshakes (the server's inside read) until neither moves. */
static void pump(struct pair *p)
{
    char buf[64];
    for (int i = 0; i < 200; i++) {
        p->cli_rc = tls_handshake(&p->cli);
        p->srv_rc = transport_read(&p->srv, buf, sizeof buf);
        if ((p->cli_rc != -EAGAIN && p->srv_rc != -EAGAIN) || (p->cli_rc == -EPROTO) ||
            (p->srv_rc < 0 && p->srv_rc != -EAGAIN))
            return;
        usleep(1000);
    }
}

static void open_pair(struct pair *p, struct tls_server_ctx *sc, struct tls_client_ctx *cc,
                      struct ev_loop *loop)
{
    int a, b;
    tcp_pair(&a, &b);
    transport_tls_client(&p->cli, a, cc, 0, loop);
    transport_tls_server(&p->srv, b, sc, loop);
    pump(p);
}

static void close_pair(struct pair *p)
{
    transport_close(&p->cli);
    transport_close(&p->srv);
}

/* Writes all of iov through t, reading from r as it goes, into out. */
static size_t transfer(struct transport *t, struct iovec *iov, int n, struct transport *r, char *out,
                       size_t cap)
{
    size_t got = 0, total = 0;
    for (int k = 0; k < n; k++) total += iov[k].iov_len;
    size_t sent = 0;
    for (int i = 0; i < 5000 && got < total; i++) {
        if (sent < total) {
            struct iovec v[8];
            int nv = 0;
            size_t skip = sent;
            for (int k = 0; k < n; k++) {
                if (skip >= iov[k].iov_len) {
                    skip -= iov[k].iov_len;
                    continue;
                }
                v[nv].iov_base = (char *)iov[k].iov_base + skip;
                v[nv++].iov_len = iov[k].iov_len - skip;
                skip = 0;
            }
            ssize_t w = transport_writev(t, v, nv);
            if (w > 0) sent += (size_t)w;
            else assert_int_equal(w, -EAGAIN);
        }
        ssize_t rd = transport_read(r, out + got, cap - got);
        if (rd > 0) got += (size_t)rd;
        else assert_int_equal(rd, -EAGAIN);
    }
    return got;
}

static void test_roundtrip_sni_and_records(void **state)
{
    set_listener(2, NULL, NULL);
    char err[512];
    struct tls_server_ctx *sc = tls_server_ctx_new(&listener, err, sizeof err);
    if (!sc) fail_msg("%s", err);
    set_cluster(ca.cert, "www.test", NULL);
    struct tls_client_ctx *cc = tls_client_ctx_new(&cluster, err, sizeof err);
    if (!cc) fail_msg("%s", err);
    uint64_t before = atomic_load(&sc->st->handshakes[TLS_MODE_USERSPACE]);
    struct pair p = {0};
    open_pair(&p, sc, cc, NULL);
    assert_int_equal(p.cli_rc, 0);
    assert_true(transport_is_tls(&p.cli) && transport_is_tls(&p.srv));
    struct tls_conn *cli = p.cli.impl;
    X509 *peer = SSL_get0_peer_certificate(cli->ssl);
    assert_non_null(peer);
    assert_int_equal(X509_check_host(peer, "www.test", 0, 0, NULL), 1); /* SNI chose the 2nd */
    /* many small iovecs and one big one: gathered into records, all arrives */
    static char big[100000], out[110000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)(i * 7);
    struct iovec iov[6] = {{"GET ", 4}, {"/ ", 2}, {"HTTP/1.1\r\n", 10}, {"\r\n", 2},
                           {big, sizeof big}, {"end", 3}};
    size_t got = transfer(&p.cli, iov, 6, &p.srv, out, sizeof out);
    assert_int_equal(got, 4 + 2 + 10 + 2 + sizeof big + 3);
    assert_memory_equal(out, "GET / HTTP/1.1\r\n\r\n", 18);
    assert_memory_equal(out + 18, big, sizeof big);
    assert_memory_equal(out + 18 + sizeof big, "end", 3);
    assert_int_equal(atomic_load(&sc->st->handshakes[TLS_MODE_USERSPACE]), before + 1);
    assert_int_equal(atomic_load(&sc->st->open[TLS_MODE_USERSPACE]), 1);
    /* the snapshot lets go first: connections keep the contexts alive */
    tls_server_ctx_unref(sc);
    tls_client_ctx_unref(cc);
    struct iovec back = {"pong", 4};
    assert_int_equal(transfer(&p.srv, &back, 1, &p.cli, out, sizeof out), 4);
    close_pair(&p);
}

static void test_session_resumption_per_endpoint(void **state)
{
    set_listener(1, NULL, NULL);
    char err[512], buf[64];
    struct tls_server_ctx *sc = tls_server_ctx_new(&listener, err, sizeof err);
    set_cluster(ca.cert, NULL, NULL); /* endpoint 127.0.0.1: verified as an IP */
    struct tls_client_ctx *cc = tls_client_ctx_new(&cluster, err, sizeof err);
    assert_non_null(sc);
    assert_non_null(cc);
    for (int round = 0; round < 2; round++) {
        struct pair p = {0};
        open_pair(&p, sc, cc, NULL);
        assert_int_equal(p.cli_rc, 0);
        struct iovec v = {"x", 1};
        assert_int_equal(transfer(&p.srv, &v, 1, &p.cli, buf, sizeof buf), 1); /* tickets read too */
        struct tls_conn *c = p.cli.impl;
        assert_int_equal(SSL_session_reused(c->ssl), round == 1);
        close_pair(&p);
    }
    assert_true(atomic_load(&cc->st->resumed) >= 1);
    tls_server_ctx_unref(sc);
    tls_client_ctx_unref(cc);
}

/* Rebuilt contexts (a reload) resume sessions, unless the client CAs changed. */
static void test_session_context_scopes_resumption(void **state)
{
    char err[512], buf[64], bundle[16384];
    size_t n = 0;
    const char *parts[] = {ca.cert, other_ca.cert};
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(parts[i], "r");
        n += fread(bundle + n, 1, sizeof bundle - n - 1, f);
        fclose(f);
    }
    bundle[n] = '\0';
    write_file(path_in_dir("ca-bundle.pem"), bundle);
    set_cluster(ca.cert, "api.test", &client);
    struct tls_client_ctx *cc = tls_client_ctx_new(&cluster, err, sizeof err);
    assert_non_null(cc);
    const char *client_cas[] = {ca.cert, ca.cert, path_in_dir("ca-bundle.pem")};
    const int want_reused[] = {0, 1, 0};
    for (int round = 0; round < 3; round++) {
        set_listener(round == 1 ? 2 : 1, client_cas[round], NULL); /* round 1: new certificate list */
        struct tls_server_ctx *sc = tls_server_ctx_new(&listener, err, sizeof err);
        if (!sc) fail_msg("%s", err);
        struct pair p = {0};
        open_pair(&p, sc, cc, NULL);
        assert_int_equal(p.cli_rc, 0);
        struct iovec v = {"x", 1};
        assert_int_equal(transfer(&p.srv, &v, 1, &p.cli, buf, sizeof buf), 1);
        struct tls_conn *c = p.srv.impl;
        if (SSL_session_reused(c->ssl) != want_reused[round]) fail_msg("round %d: reused %d", round, !want_reused[round]);
        close_pair(&p);
        tls_server_ctx_unref(sc);
    }
    tls_client_ctx_unref(cc);
}

static void test_failures_are_counted(void **state)
{
    char err[512];
    set_listener(1, ca.cert, "x-client-subject");
    struct tls_server_ctx *sc = tls_server_ctx_new(&listener, err, sizeof err);
    assert_non_null(sc);
    /* we do not trust the server: verify, at the client */
    set_cluster(other_ca.cert, "api.test", &client);
    struct tls_client_ctx *cc = tls_client_ctx_new(&cluster, err, sizeof err);
    assert_non_null(cc);
    uint64_t verify = atomic_load(&cc->st->errors[TLS_ERR_VERIFY]);
    struct pair p = {0};
    open_pair(&p, sc, cc, NULL);
    assert_int_equal(p.cli_rc, -EPROTO);
    assert_int_equal(atomic_load(&cc->st->errors[TLS_ERR_VERIFY]), verify + 1);
    close_pair(&p);
    tls_client_ctx_unref(cc);
    /* no client certificate: the server counts it; the client learns at its read (TLS 1.3) */
    set_cluster(ca.cert, "api.test", NULL);
    cc = tls_client_ctx_new(&cluster, err, sizeof err);
    uint64_t nocert = atomic_load(&sc->st->errors[TLS_ERR_NO_CERTIFICATE]);
    uint64_t alert = atomic_load(&cc->st->errors[TLS_ERR_ALERT]);
    p = (struct pair){0};
    open_pair(&p, sc, cc, NULL);
    assert_int_equal(p.srv_rc, -EPROTO);
    assert_int_equal(atomic_load(&sc->st->errors[TLS_ERR_NO_CERTIFICATE]), nocert + 1);
    char buf[64];
    ssize_t r = -EAGAIN;
    for (int i = 0; i < 200 && r == -EAGAIN; i++, usleep(1000)) r = transport_read(&p.cli, buf, sizeof buf);
    assert_int_equal(r, -EPROTO);
    assert_int_equal(atomic_load(&cc->st->errors[TLS_ERR_ALERT]), alert + 1);
    close_pair(&p);
    tls_client_ctx_unref(cc);
    /* the right certificate: its subject is kept for the header */
    set_cluster(ca.cert, "api.test", &client);
    cc = tls_client_ctx_new(&cluster, err, sizeof err);
    p = (struct pair){0};
    open_pair(&p, sc, cc, NULL);
    assert_int_equal(p.cli_rc, 0);
    assert_int_equal(p.srv_rc, -EAGAIN);
    assert_string_equal(tls_subject_header(&p.srv), "x-client-subject");
    assert_string_equal(tls_peer_subject(&p.srv), "CN=client1,O=Umbra Tests");
    assert_null(tls_subject_header(&p.cli));
    close_pair(&p);
    tls_client_ctx_unref(cc);
    tls_server_ctx_unref(sc);
}

static void test_handshake_timeout_and_plain(void **state)
{
    char err[512];
    set_listener(1, NULL, NULL);
    struct tls_server_ctx *sc = tls_server_ctx_new(&listener, err, sizeof err);
    uint64_t t = atomic_load(&sc->st->errors[TLS_ERR_TIMEOUT]);
    int a, b;
    tcp_pair(&a, &b);
    struct transport srv, plain;
    transport_tls_server(&srv, b, sc, NULL);
    char buf[16];
    assert_int_equal(transport_read(&srv, buf, sizeof buf), -EAGAIN);
    assert_true(tls_handshake_timed_out(&srv));
    assert_int_equal(atomic_load(&sc->st->errors[TLS_ERR_TIMEOUT]), t + 1);
    transport_close(&srv);
    /* a probe that connects and leaves without a byte is EOF, not an error */
    int c2, s2;
    tcp_pair(&c2, &s2);
    close(c2);
    uint64_t closed = atomic_load(&sc->st->errors[TLS_ERR_CLOSED]);
    transport_tls_server(&srv, s2, sc, NULL);
    ssize_t r = -EAGAIN;
    for (int i = 0; i < 200 && r == -EAGAIN; i++, usleep(1000)) r = transport_read(&srv, buf, sizeof buf);
    assert_int_equal(r, 0);
    assert_int_equal(atomic_load(&sc->st->errors[TLS_ERR_CLOSED]), closed);
    transport_close(&srv);
    /* plain TCP: never TLS, never timed out, handshake done at once */
    transport_plain(&plain, a);
    assert_false(transport_is_tls(&plain));
    assert_false(tls_handshake_timed_out(&plain));
    assert_int_equal(tls_handshake(&plain), 0);
    assert_null(tls_peer_subject(&plain));
    transport_close(&plain);
    tls_server_ctx_unref(sc);
}

/* ---- plaintext held inside OpenSSL ------------------------------------ */

static int fired;
static void read_cb(struct ev_loop *loop, ev_io *w, int revents) { fired += (revents & EV_READ) != 0; }

static void test_pending_plaintext_is_signalled(void **state)
{
    char err[512];
    set_listener(1, NULL, NULL);
    set_cluster(ca.cert, "api.test", NULL);
    struct tls_server_ctx *sc = tls_server_ctx_new(&listener, err, sizeof err);
    struct tls_client_ctx *cc = tls_client_ctx_new(&cluster, err, sizeof err);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct pair p = {0};
    open_pair(&p, sc, cc, loop);
    assert_int_equal(p.cli_rc, 0);
    static char rec[RECORD_MAX];
    memset(rec, 'r', sizeof rec);
    struct iovec v = {rec, sizeof rec};
    assert_int_equal(transport_writev(&p.srv, &v, 1), (ssize_t)sizeof rec); /* one record */
    char small[100];
    ssize_t r = -EAGAIN;
    for (int i = 0; i < 200 && r == -EAGAIN; i++, usleep(1000)) r = transport_read(&p.cli, small, sizeof small);
    assert_int_equal(r, (ssize_t)sizeof small);
    assert_true(((struct tls_conn *)p.cli.impl)->pending); /* the socket is empty now */
    ev_io w;
    ev_io_init(&w, read_cb, p.cli.fd, EV_READ);
    ev_io_start(loop, &w);
    fired = 0;
    ev_run(loop, EVRUN_NOWAIT);
    assert_int_equal(fired, 1);
    size_t total = sizeof small;
    static char rest[RECORD_MAX];
    for (int i = 0; i < 200 && total < sizeof rec; i++) {
        r = transport_read(&p.cli, rest, sizeof rest);
        if (r > 0) total += (size_t)r;
    }
    assert_int_equal(total, sizeof rec);
    ev_run(loop, EVRUN_NOWAIT); /* nothing held now: the watcher lets go of it */
    assert_false(((struct tls_conn *)p.cli.impl)->pending);
    assert_false(pend.started);
    ev_io_stop(loop, &w);
    close_pair(&p);
    ev_loop_destroy(loop);
    tls_server_ctx_unref(sc);
    tls_client_ctx_unref(cc);
}

/* ---- stats -------------------------------------------------------------- */

static void test_stats_render(void **state)
{
    struct tls_stats *st = tls_stats_get(TLS_SIDE_UPSTREAM, "render-me");
    assert_ptr_equal(st, tls_stats_get(TLS_SIDE_UPSTREAM, "render-me"));
    assert_ptr_not_equal(st, tls_stats_get(TLS_SIDE_DOWNSTREAM, "render-me"));
    tls_stats_error(st, TLS_ERR_PLAINTEXT);
    struct strbuf sb = STRBUF_INIT;
    tls_stats_render_prometheus(&sb);
    assert_non_null(strstr(sb.data, "umbra_tls_handshake_errors_total{side=\"upstream\",name=\"render-me\","
                                     "reason=\"plaintext\"} 1\n"));
    assert_non_null(strstr(sb.data, "umbra_tls_handshakes_total{side=\"upstream\",name=\"render-me\","
                                     "mode=\"ktls\"} 0\n"));
    strbuf_reset(&sb);
    tls_stats_render_json(&sb);
    assert_non_null(strstr(sb.data, "\"render-me\":{\"resumed\":0"));
    assert_non_null(strstr(sb.data, "\"plaintext\":1"));
    strbuf_free(&sb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_files),
        cmocka_unit_test(test_config_tls_blocks),
        cmocka_unit_test(test_config_tls_errors),
        cmocka_unit_test(test_roundtrip_sni_and_records),
        cmocka_unit_test(test_session_resumption_per_endpoint),
        cmocka_unit_test(test_session_context_scopes_resumption),
        cmocka_unit_test(test_failures_are_counted),
        cmocka_unit_test(test_handshake_timeout_and_plain),
        cmocka_unit_test(test_pending_plaintext_is_signalled),
        cmocka_unit_test(test_stats_render),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
