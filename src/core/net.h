/* net — socket plumbing shared by listeners, upstream connects, the admin
 * listener and the embedded servers. Non-blocking everywhere. */
#ifndef UMBRA_NET_H
#define UMBRA_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "core/config.h"

/** Opens a non-blocking listening socket on addr (SO_REUSEADDR, and
 *  SO_REUSEPORT when reuseport). Port 0 picks an ephemeral port; read it back
 *  with net_local_addr(). Returns the fd or -errno. */
int net_listen(const struct cfg_addr *addr, bool reuseport, int backlog);

/** Starts a non-blocking connect (TCP_NODELAY set). Returns the fd (the
 *  connect may still be in progress: wait for writability, then
 *  net_connect_result()) or -errno. */
int net_connect(const struct sockaddr *sa, socklen_t len);

/** After writability on a connecting fd: 0 if connected, else -errno. */
int net_connect_result(int fd);

/** Fills *out with the socket's local address (text form "ip:port"). */
int net_local_addr(int fd, struct cfg_addr *out);

/** Formats a socket address as "1.2.3.4:80" or "[::1]:80". */
void net_format(const struct sockaddr *sa, char *out, size_t outlen);

/** Formats only the IP ("1.2.3.4", "::1"), for X-Forwarded-For. */
void net_format_ip(const struct sockaddr *sa, char *out, size_t outlen);

#endif
