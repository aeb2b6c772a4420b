/* demo — the `umbra demo` subcommand: a proxy in front of an embedded echo
 * server (primary) with an embedded collector (shadow) that prints every
 * mirrored request on stdout, so mirroring can be seen in one command. */
#ifndef UMBRA_DEMO_H
#define UMBRA_DEMO_H

/**
 * `umbra demo [--listen ADDR] [--admin ADDR]` (defaults 127.0.0.1:8080 and
 * 127.0.0.1:9901). Prints the generated config on stdout, then runs the proxy
 * until SIGTERM/SIGINT; returns server_run()'s exit code, 2 on bad arguments,
 * 1 when the embedded servers or the config cannot start. argv[0] is the
 * subcommand name; argv is borrowed.
 */
int cmd_demo(int argc, char **argv);

#endif
