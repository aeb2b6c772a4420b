/* analyzer — brackets for the statements where gcc -fanalyzer (the one
 * `make lint` runs) reports a leak that is not one. It changes no code and
 * silences nothing else; every use says, next to it, who owns the pointer. */
#ifndef UMBRA_ANALYZER_H
#define UMBRA_ANALYZER_H

/* gcc 12's analyzer forgets a pointer stored into a struct it reached through
 * another pointer when an unknown function is called or a sibling field is
 * written, then reports it as leaked where that happens. Other compilers
 * (clang for the fuzzers, clang-tidy) do not know the warning: for them the
 * brackets are empty. */
#if defined(__GNUC__) && !defined(__clang__)
/** Starts a region where -Wanalyzer-malloc-leak is off; end it with
 *  ANALYZER_LEAK_OK_END in the same block, a statement or two later. */
#define ANALYZER_LEAK_OK_BEGIN \
    _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wanalyzer-malloc-leak\"")
/** Ends the region ANALYZER_LEAK_OK_BEGIN started. */
#define ANALYZER_LEAK_OK_END _Pragma("GCC diagnostic pop")
#else
#define ANALYZER_LEAK_OK_BEGIN
#define ANALYZER_LEAK_OK_END
#endif

#endif
