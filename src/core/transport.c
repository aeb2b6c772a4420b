/* transport — plain TCP. */
#include "core/transport.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

static ssize_t plain_read(struct transport *t, void *buf, size_t len)
{
    for (;;) {
        ssize_t r = read(t->fd, buf, len);
        if (r >= 0) return r;
        if (errno != EINTR) return -errno;
    }
}

static ssize_t plain_writev(struct transport *t, const struct iovec *iov, int iovcnt)
{
    for (;;) {
        ssize_t w = writev(t->fd, iov, iovcnt);
        if (w >= 0) return w;
        if (errno != EINTR) return -errno;
    }
}

static void plain_shutdown(struct transport *t) { shutdown(t->fd, SHUT_WR); }

static void plain_close(struct transport *t)
{
    if (t->fd >= 0) close(t->fd);
    t->fd = -1;
}

static const struct transport_ops plain_ops = {plain_read, plain_writev, plain_shutdown,
                                               plain_close};

void transport_plain(struct transport *t, int fd)
{
    t->ops = &plain_ops;
    t->fd = fd;
    t->wants = 0;
    t->impl = NULL;
    t->write_blocked = false;
}
