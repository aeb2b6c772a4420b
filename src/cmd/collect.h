/* collect — the `umbra collect` subcommand: a standalone shadow sink that
 * writes one JSON line per request (see mirror/collector.h). */
#ifndef UMBRA_COLLECT_H
#define UMBRA_COLLECT_H

/**
 * `umbra collect --listen ADDR --out FILE [--body] [--status N]
 * [--delay DURATION]`. FILE "-" is stdout; other files are appended to.
 * Prints "collect: listening on IP:PORT" on stderr once bound (the real port
 * when ADDR has port 0). Runs until SIGTERM/SIGINT, flushes, returns 0.
 * Bad arguments: usage on stderr, returns 2; other failures return 1.
 * argv[0] is the subcommand name; argv is borrowed.
 */
int cmd_collect(int argc, char **argv);

#endif
