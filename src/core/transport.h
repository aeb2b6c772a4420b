/* transport — the byte stream under a connection: plain TCP today, TLS
 * behind the same four calls. HTTP code (h1s, forward, shadow) reads and
 * writes only through these, so a TLS transport slots in without touching it.
 * A transport that needs the opposite readiness to make progress (TLS
 * renegotiation, a handshake) says so in `wants`, and the caller adds those
 * events to its watcher. */
#ifndef UMBRA_TRANSPORT_H
#define UMBRA_TRANSPORT_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

struct transport;

struct transport_ops {
    /** Reads up to len bytes: >0 read, 0 end of stream, -EAGAIN, or -errno. */
    ssize_t (*read)(struct transport *t, void *buf, size_t len);
    /** Writes from iov: bytes written (>0), -EAGAIN, or -errno. */
    ssize_t (*writev)(struct transport *t, const struct iovec *iov, int iovcnt);
    /** Ends the write side (FIN, or close_notify then FIN). */
    void (*shutdown)(struct transport *t);
    /** Releases everything, including the fd. */
    void (*close)(struct transport *t);
};

#define TRANSPORT_WANT_READ 1
#define TRANSPORT_WANT_WRITE 2

struct transport {
    const struct transport_ops *ops;
    int fd;
    int wants;  /* TRANSPORT_WANT_* the transport itself needs next (0 for plain TCP) */
    void *impl; /* the implementation's state (e.g. SSL *), owned by it */
    /* A write met EAGAIN: until the owner sees the socket writable again
     * (transport_writable), writes fail at once without a syscall. */
    bool write_blocked;
};

/** Makes t a plain TCP transport over fd (fd is owned by t from now on). */
void transport_plain(struct transport *t, int fd);

static inline ssize_t transport_read(struct transport *t, void *buf, size_t len)
{
    return t->ops->read(t, buf, len);
}
/* After EAGAIN, a writev before the socket is writable again fails again:
 * one wasted syscall for every chunk a fast sender hands a peer that reads
 * slowly or not at all. The owner keeps its write watcher on meanwhile. */
static inline ssize_t transport_writev(struct transport *t, const struct iovec *iov, int n)
{
    if (t->write_blocked) return -EAGAIN;
    ssize_t w = t->ops->writev(t, iov, n);
    if (w == -EAGAIN) t->write_blocked = true;
    return w;
}
/** The owner's write watcher fired (or TLS wants what fired): writes may go on. */
static inline void transport_writable(struct transport *t) { t->write_blocked = false; }
static inline void transport_shutdown(struct transport *t) { t->ops->shutdown(t); }
static inline void transport_close(struct transport *t) { t->ops->close(t); }

#endif
