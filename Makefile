# umbra — a traffic-mirroring proxy. See README.md for the two commands.
#
#   make            release build: build/umbra
#   make run        install deps, build, start `umbra demo`
#   make check      install deps, unit + integration tests under ASan/UBSan,
#                   and the release build's allocator test
#   make bench      load benchmarks (bench/run.sh)
#   make fuzz       every libFuzzer target for FUZZ_SECONDS each
#   make clean

CC      ?= gcc
PKGS    := yaml-0.1 libpcre2-8 jansson libssl libcrypto libnghttp2 zlib
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lev -lpthread -lm

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wno-unused-parameter -Wformat=2
BASE_CFLAGS := -std=c17 -D_GNU_SOURCE -Isrc $(WARN) $(PKG_CFLAGS) -MMD -MP
REL_CFLAGS  := $(BASE_CFLAGS) -O2 -g -fno-omit-frame-pointer
SAN_FLAGS   := -fsanitize=address,undefined -fno-sanitize-recover=undefined
ASAN_CFLAGS := $(BASE_CFLAGS) -O1 -g -fno-omit-frame-pointer $(SAN_FLAGS) -DUMBRA_TESTING

SRCS      := $(sort $(wildcard src/*/*.c))
MAIN_SRC  := src/cmd/main.c
LIB_SRCS  := $(filter-out $(MAIN_SRC),$(SRCS))
UNIT_SRCS := $(sort $(wildcard tests/unit/*_test.c))
FUZZ_SRCS := $(sort $(wildcard fuzz/*_fuzz.c))

REL_OBJS  := $(SRCS:%.c=build/rel/%.o)
ASAN_OBJS := $(SRCS:%.c=build/asan/%.o)
ASAN_LIB  := build/asan/libumbra.a
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=build/asan/tests/%)
FUZZ_BINS := $(FUZZ_SRCS:fuzz/%.c=build/fuzz/%)

PYTEST      := /usr/bin/python3 -m pytest
FUZZ_SECONDS ?= 60

.PHONY: all run check unit integration conformance release-tests bench fuzz fuzz-build fuzz-replay deps clean asan \
        soak soak-short slow-clients lint

all: build/umbra

deps:
	@bash scripts/install-deps.sh

build/umbra: $(REL_OBJS)
	$(CC) $(REL_CFLAGS) -o $@ $^ $(PKG_LIBS)

build/rel/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(REL_CFLAGS) -c -o $@ $<

asan: build/asan/umbra

build/asan/umbra: $(ASAN_OBJS)
	$(CC) $(ASAN_CFLAGS) -o $@ $^ $(PKG_LIBS)

build/asan/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_CFLAGS) -c -o $@ $<

$(ASAN_LIB): $(LIB_SRCS:%.c=build/asan/%.o)
	@rm -f $@
	ar rcs $@ $^

build/asan/tests/%: tests/unit/%.c $(ASAN_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_CFLAGS) -Itests/unit -o $@ $< $(ASAN_LIB) $(PKG_LIBS) -lcmocka

run: deps
	@$(MAKE) --no-print-directory build/umbra
	./build/umbra demo

unit: $(UNIT_BINS)
	@fail=0; for t in $(UNIT_BINS); do \
	  echo "== $$t"; $$t || fail=1; \
	done; exit $$fail

integration: build/asan/umbra
	UMBRA_BIN=$(CURDIR)/build/asan/umbra $(PYTEST) -q -p no:cacheprovider tests/integration $(PYTEST_ARGS)

check: deps
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory fuzz-replay
	@$(MAKE) --no-print-directory integration
	@$(MAKE) --no-print-directory conformance
	@$(MAKE) --no-print-directory release-tests
	@$(MAKE) --no-print-directory soak-short

# HTTP/1.1 framing and smuggling cases, limits, and the fault upstream.
conformance: build/asan/umbra
	UMBRA_BIN=$(CURDIR)/build/asan/umbra $(PYTEST) -q -p no:cacheprovider tests/conformance tests/faults $(PYTEST_ARGS)

# What only the release build shows (glibc's allocator, not ASan's).
release-tests: build/umbra
	UMBRA_BIN=$(CURDIR)/build/umbra $(PYTEST) -q -p no:cacheprovider tests/release $(PYTEST_ARGS)

# Mixed load while the shadow cycles healthy/slow/black-hole/down; fails if
# RSS or descriptors grow without bound or any primary request fails.
soak-short: build/asan/umbra
	UMBRA_BIN=$(CURDIR)/build/asan/umbra /usr/bin/python3 tests/soak/soak.py --minutes 3

soak: deps
	@$(MAKE) --no-print-directory build/umbra
	UMBRA_BIN=$(CURDIR)/build/umbra /usr/bin/python3 tests/soak/soak.py --minutes 30

slow-clients: deps
	@$(MAKE) --no-print-directory build/umbra
	UMBRA_BIN=$(CURDIR)/build/umbra /usr/bin/python3 tests/soak/slow_clients.py

lint: deps
	bash scripts/lint.sh

bench: deps
	@$(MAKE) --no-print-directory build/umbra
	bash bench/run.sh

fuzz-build: $(FUZZ_BINS)

FUZZ_CFLAGS := -std=c17 -D_GNU_SOURCE -Isrc -g -O1 $(PKG_CFLAGS) -MMD -MP
FUZZ_LIB := build/fuzz/libumbra.a

build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -c -o $@ $<

$(FUZZ_LIB): $(LIB_SRCS:%.c=build/fuzz/obj/%.o)
	@rm -f $@
	ar rcs $@ $^

build/fuzz/%: fuzz/%.c $(FUZZ_LIB)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(FUZZ_LIB) $(PKG_LIBS)

fuzz: deps
	@$(MAKE) --no-print-directory fuzz-build
	@for f in $(FUZZ_BINS); do \
	  n=$$(basename $$f); mkdir -p build/fuzz/corpus/$$n; \
	  dict=; [ -f fuzz/$$n.dict ] && dict=-dict=fuzz/$$n.dict; \
	  echo "== $$n for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) $$dict build/fuzz/corpus/$$n fuzz/corpus/$$n || exit 1; \
	done

# Every committed corpus input once, under ASan/UBSan: a regression test.
fuzz-replay: fuzz-build
	@for f in $(FUZZ_BINS); do \
	  n=$$(basename $$f); \
	  $$f -runs=0 fuzz/corpus/$$n >build/fuzz/$$n.replay.log 2>&1 || { cat build/fuzz/$$n.replay.log; exit 1; }; \
	  echo "fuzz-replay $$n: $$(ls fuzz/corpus/$$n | wc -l) inputs, no finding"; \
	done

clean:
	rm -rf build

-include $(REL_OBJS:.o=.d) $(ASAN_OBJS:.o=.d) $(LIB_SRCS:%.c=build/fuzz/obj/%.d)
