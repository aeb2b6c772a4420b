/* tls_handshakes — the TLS handshake load of `make bench`: keeps a number of
 * connections in flight to one address, each a TCP connect, a full or a
 * resumed TLS handshake, close_notify both ways (the server's session tickets
 * are read meanwhile) and a close, for a number of seconds; then prints one
 * line "BENCHJSON {...}" (handshakes, resumed, errors, latency percentiles).
 *
 * It sends no HTTP and does not verify the certificate chain (TLS still checks
 * the server's handshake signature): what it costs the server is the
 * handshake. bench.py compiles it at bench time:
 *   cc -std=c17 -D_GNU_SOURCE -O2 -o tls_handshakes bench/tls_handshakes.c -lssl -lcrypto
 * and runs it as `tls_handshakes -m new|resume -t SECONDS -c CONCURRENCY
 * [-s SNI] IPV4:PORT`. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONCURRENCY 1024
#define MAX_SAMPLES (1u << 22)        /* latencies kept for percentiles; more are only counted */
#define CONN_DEADLINE_NS 5000000000LL /* one connection's whole life */
#define TICK_MS 100                   /* how often deadlines are checked */
#define GRACE_NS 2000000000LL         /* after the run: time for connections in flight to end */

enum slot_state {
    SLOT_IDLE,       /* no connection: the next one starts at once */
    SLOT_CONNECTING, /* TCP connect in progress */
    SLOT_HANDSHAKE,  /* SSL_connect in progress */
    SLOT_CLOSING,    /* handshake counted, close_notify sent; reading until the server closes */
};

struct slot {
    enum slot_state state;
    int fd;
    uint32_t events; /* what epoll watches for on fd */
    SSL *ssl;
    int64_t started; /* ns: when connect() was called */
};

struct run {
    SSL_CTX *ctx;
    struct sockaddr_in addr;
    const char *sni;
    bool resume;
    bool draining;        /* time is up: no new connections, nothing more counted */
    SSL_SESSION *session; /* resume mode: the newest ticket, offered by every new connection */
    int epfd;
    struct slot *slots;
    int nslots;
    uint64_t handshakes, resumed, err_connect, err_handshake, err_timeout;
    uint32_t *lat_us; /* handshake latencies (connect() to SSL_connect done) */
    size_t nlat;
    double lat_sum, lat_max;
    char protocol[32], cipher[64], group[32]; /* of the last handshake */
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Resume mode keeps a copy of the newest session, and each new connection
 * offers a copy of that. Copies both ways, because OpenSSL writes to the
 * session a connection uses (it marks it unresumable when the connection ends
 * badly, among other things): with one object shared by connections in
 * flight, some resumptions would fail for reasons of this client's making. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct run *r = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (!r->resume || !SSL_SESSION_is_resumable(sess)) return 0;
    SSL_SESSION *copy = SSL_SESSION_dup(sess);
    if (!copy) return 0;
    SSL_SESSION_free(r->session);
    r->session = copy;
    return 0; /* sess stays the connection's */
}

static void slot_watch(struct run *r, struct slot *s, uint32_t events)
{
    if (s->events == events) return;
    struct epoll_event ev = {.events = events, .data.ptr = s};
    if (epoll_ctl(r->epfd, s->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd, &ev) < 0) {
        perror("tls_handshakes: epoll_ctl");
        exit(2);
    }
    s->events = events;
}

static void slot_close(struct slot *s)
{
    SSL_free(s->ssl); /* closing fd takes it out of epoll */
    if (s->fd >= 0) close(s->fd);
    s->ssl = NULL;
    s->fd = -1;
    s->events = 0;
    s->state = SLOT_IDLE;
    ERR_clear_error();
}

static void record(struct run *r, struct slot *s)
{
    double us = (double)(now_ns() - s->started) / 1e3;
    if (r->draining) return;
    r->handshakes++;
    if (SSL_session_reused(s->ssl)) r->resumed++;
    if (r->nlat < MAX_SAMPLES) r->lat_us[r->nlat++] = (uint32_t)(us + 0.5);
    r->lat_sum += us;
    if (us > r->lat_max) r->lat_max = us;
    int nid = SSL_get_negotiated_group(s->ssl);
    const char *group = nid > 0 ? OBJ_nid2sn(nid) : NULL;
    snprintf(r->protocol, sizeof r->protocol, "%s", SSL_get_version(s->ssl));
    snprintf(r->cipher, sizeof r->cipher, "%s", SSL_get_cipher_name(s->ssl));
    snprintf(r->group, sizeof r->group, "%s", group ? group : "?");
}

/* Reads what the server still sends (tickets, its close_notify) until it
 * closes; any ending counts, the handshake already did. */
static void slot_drain(struct run *r, struct slot *s)
{
    char scratch[4096];
    for (;;) {
        int n = SSL_read(s->ssl, scratch, sizeof scratch);
        if (n > 0) continue;
        if (SSL_get_error(s->ssl, n) == SSL_ERROR_WANT_READ) {
            slot_watch(r, s, EPOLLIN);
            return;
        }
        slot_close(s);
        return;
    }
}

static void slot_handshake(struct run *r, struct slot *s)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(s->ssl);
    if (rc == 1) {
        record(r, s);
        s->state = SLOT_CLOSING;
        SSL_shutdown(s->ssl); /* our close_notify; a few bytes, the socket takes them */
        slot_drain(r, s);
        return;
    }
    switch (SSL_get_error(s->ssl, rc)) {
    case SSL_ERROR_WANT_READ: slot_watch(r, s, EPOLLIN); return;
    case SSL_ERROR_WANT_WRITE: slot_watch(r, s, EPOLLOUT); return;
    default:
        if (r->err_handshake++ == 0) {
            fprintf(stderr, "tls_handshakes: first handshake failure: ");
            ERR_print_errors_fp(stderr);
            fprintf(stderr, "(errno %s)\n", strerror(errno));
        }
        slot_close(s);
    }
}

static int slot_start(struct run *r, struct slot *s)
{
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) return -1;
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->ssl = SSL_new(r->ctx);
    if (!s->ssl || SSL_set_fd(s->ssl, s->fd) != 1) goto fail;
    if (r->sni) SSL_set_tlsext_host_name(s->ssl, r->sni);
    if (r->resume && r->session) {
        SSL_SESSION *copy = SSL_SESSION_dup(r->session);
        int ok = copy && SSL_set_session(s->ssl, copy) == 1;
        SSL_SESSION_free(copy); /* s->ssl holds its own reference */
        if (!ok) goto fail;
    }
    SSL_set_connect_state(s->ssl);
    s->started = now_ns();
    if (connect(s->fd, (struct sockaddr *)&r->addr, sizeof r->addr) == 0) {
        s->state = SLOT_HANDSHAKE;
        slot_handshake(r, s);
    } else if (errno == EINPROGRESS) {
        s->state = SLOT_CONNECTING;
        slot_watch(r, s, EPOLLOUT);
    } else {
        r->err_connect++;
        slot_close(s);
    }
    return 0;
fail:
    slot_close(s);
    return -1;
}

static void slot_ready(struct run *r, struct slot *s)
{
    if (s->state == SLOT_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            r->err_connect++;
            slot_close(s);
            return;
        }
        s->state = SLOT_HANDSHAKE;
    }
    if (s->state == SLOT_HANDSHAKE)
        slot_handshake(r, s);
    else if (s->state == SLOT_CLOSING)
        slot_drain(r, s);
}

/* Starts idle slots (in resume mode only one until a ticket has arrived, so
 * that later connections have a session to offer; none once draining) and
 * expires stuck ones. Returns how many are busy, or -1. */
static int refill(struct run *r, int64_t now, bool check_deadlines)
{
    int allowed = r->draining ? 0 : r->resume && !r->session ? 1 : r->nslots, busy = 0;
    for (int i = 0; i < r->nslots; i++) {
        struct slot *s = &r->slots[i];
        if (check_deadlines && s->state != SLOT_IDLE && now - s->started > CONN_DEADLINE_NS) {
            if (s->state != SLOT_CLOSING && !r->draining) r->err_timeout++;
            slot_close(s);
        }
        if (s->state != SLOT_IDLE) allowed--, busy++;
    }
    for (int i = 0; i < r->nslots && allowed > 0; i++)
        if (r->slots[i].state == SLOT_IDLE) {
            if (slot_start(r, &r->slots[i]) < 0) return -1;
            allowed--, busy++;
        }
    return busy;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t pct(const struct run *r, double q)
{
    if (r->nlat == 0) return 0;
    size_t i = (size_t)(q / 100.0 * (double)(r->nlat - 1) + 0.5);
    return r->lat_us[i];
}

static void report(struct run *r, int64_t duration_ns)
{
    qsort(r->lat_us, r->nlat, sizeof *r->lat_us, cmp_u32);
    printf("BENCHJSON {\"requests\":%llu,\"resumed\":%llu,\"duration_us\":%lld,"
           "\"errors\":{\"connect\":%llu,\"handshake\":%llu,\"timeout\":%llu},"
           "\"latency_us\":{\"min\":%u,\"mean\":%.1f,\"max\":%.0f,\"p50\":%u,\"p90\":%u,\"p99\":%u,"
           "\"p99_9\":%u},\"protocol\":\"%s\",\"cipher\":\"%s\",\"group\":\"%s\"}\n",
           (unsigned long long)r->handshakes, (unsigned long long)r->resumed,
           (long long)(duration_ns / 1000), (unsigned long long)r->err_connect,
           (unsigned long long)r->err_handshake, (unsigned long long)r->err_timeout,
           r->nlat ? r->lat_us[0] : 0, r->handshakes ? r->lat_sum / (double)r->handshakes : 0.0,
           r->lat_max, pct(r, 50), pct(r, 90), pct(r, 99), pct(r, 99.9), r->protocol, r->cipher,
           r->group);
}

/* Runs the event loop until `end`; returns how many connections are still
 * busy then, or -1. */
static int loop_until(struct run *r, int64_t end)
{
    struct epoll_event evs[256];
    int64_t last_tick = now_ns();
    int busy = refill(r, last_tick, false);
    for (int64_t now = last_tick; busy > 0 && now < end; now = now_ns()) {
        int wait_ms = (int)((end - now) / 1000000) + 1;
        int n = epoll_wait(r->epfd, evs, 256, wait_ms < TICK_MS ? wait_ms : TICK_MS);
        if (n < 0 && errno != EINTR) return -1;
        for (int i = 0; i < n; i++) slot_ready(r, evs[i].data.ptr);
        now = now_ns();
        bool tick = now - last_tick > TICK_MS * 1000000LL;
        if (tick) last_tick = now;
        busy = refill(r, now, tick);
    }
    return busy;
}

/* `seconds` of load; then connections in flight may end normally (a cut
 * handshake would be a failure on the server's books), uncounted. */
static int run_for(struct run *r, int seconds)
{
    int64_t start = now_ns(), end = start + (int64_t)seconds * 1000000000LL;
    if (loop_until(r, end) < 0) return -1;
    int64_t stop = now_ns();
    r->draining = true;
    if (loop_until(r, stop + GRACE_NS) < 0) return -1;
    report(r, stop - start);
    return 0;
}

static SSL_CTX *client_ctx(struct run *r)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) return NULL;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    /* A server that closes without close_notify after the handshake is no
     * error here: the handshake is what is measured. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x08http/1.1", 9);
    SSL_CTX_set_app_data(ctx, r);
    /* Sessions are kept by new_session_cb, not in OpenSSL's client cache. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
    return ctx;
}

static int parse_addr(const char *text, struct sockaddr_in *a)
{
    char host[64];
    const char *colon = strrchr(text, ':');
    if (!colon || (size_t)(colon - text) >= sizeof host) return -1;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    long port = strtol(colon + 1, NULL, 10);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    return port > 0 && port < 65536 && inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

/* A whole number in [1, max], or 0. */
static int number(const char *text, long max)
{
    char *end;
    long v = strtol(text, &end, 10);
    return *text && !*end && v >= 1 && v <= max ? (int)v : 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: tls_handshakes -m new|resume -t SECONDS -c CONCURRENCY [-s SNI] IPV4:PORT\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct run r = {.epfd = -1};
    int seconds = 10, opt, rc = 1;
    const char *mode = "new";
    r.nslots = 16;
    while ((opt = getopt(argc, argv, "m:t:c:s:")) != -1) {
        if (opt == 'm')
            mode = optarg;
        else if (opt == 't')
            seconds = number(optarg, 86400);
        else if (opt == 'c')
            r.nslots = number(optarg, MAX_CONCURRENCY);
        else if (opt == 's')
            r.sni = optarg;
        else
            usage();
    }
    if (optind != argc - 1 || seconds < 1 || r.nslots < 1 || r.nslots > MAX_CONCURRENCY ||
        parse_addr(argv[optind], &r.addr) < 0 || (strcmp(mode, "new") && strcmp(mode, "resume")))
        usage();
    r.resume = !strcmp(mode, "resume");
    r.slots = calloc((size_t)r.nslots, sizeof *r.slots);
    r.lat_us = malloc(MAX_SAMPLES * sizeof *r.lat_us);
    if (!r.slots || !r.lat_us) goto out;
    for (int i = 0; i < r.nslots; i++) r.slots[i].fd = -1;
    r.ctx = client_ctx(&r);
    r.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!r.ctx || r.epfd < 0) goto out;
    if (run_for(&r, seconds) < 0) {
        perror("tls_handshakes");
        goto out;
    }
    rc = 0;
out:
    for (int i = 0; r.slots && i < r.nslots; i++)
        if (r.slots[i].state != SLOT_IDLE) slot_close(&r.slots[i]);
    if (r.epfd >= 0) close(r.epfd);
    SSL_SESSION_free(r.session);
    SSL_CTX_free(r.ctx);
    free(r.slots);
    free(r.lat_us);
    return rc;
}
