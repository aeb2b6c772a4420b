/* transport — the byte stream under a connection: plain TCP today, TLS
 * behind the same four calls. HTTP code (h1s, forward, shadow) reads and
 * writes only through these, so a TLS transport slots in without touching it.
 * A transport that needs the opposite readiness to make progress (TLS
 * renegotiation, a handshake) says so in `wants`, and the caller adds those
 * events to its watcher. */
#ifndef UMBRA_TRANSPORT_H
#define UMBRA_TRANSPORT_H

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
};

/** Makes t a plain TCP transport over fd (fd is owned by t from now on). */
void transport_plain(struct transport *t, int fd);

static inline ssize_t transport_read(struct transport *t, void *buf, size_t len)
{
    return t->ops->read(t, buf, len);
}
static inline ssize_t transport_writev(struct transport *t, const struct iovec *iov, int n)
{
    return t->ops->writev(t, iov, n);
}
static inline void transport_shutdown(struct transport *t) { t->ops->shutdown(t); }
static inline void transport_close(struct transport *t) { t->ops->close(t); }

#endif
