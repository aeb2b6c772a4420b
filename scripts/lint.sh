#!/usr/bin/env bash
# lint — static analysis of src/: clang-tidy (checks in .clang-tidy), cppcheck,
# gcc -fanalyzer, and clang-format --dry-run -Werror (style in .clang-format).
# Each tool's findings go to build/lint/<tool>.txt; a summary is printed and
# the exit status is 1 when any tool found something. It reads and never
# edits src/ (`clang-format -i src/*/*.[ch]` applies the format by hand).
#
#   scripts/lint.sh                 every tool over every file of src/
#   scripts/lint.sh src/http/h1.c   only these files
#   LINT_TOOLS="tidy cppcheck" scripts/lint.sh    a subset of: tidy cppcheck analyzer format
#   LINT_JOBS=2 (default: nproc)    parallel clang-tidy / gcc processes
set -uo pipefail

cd "$(dirname "$0")/.."
out=build/lint
mkdir -p "$out"
tools=${LINT_TOOLS:-"tidy cppcheck analyzer format"}
jobs=${LINT_JOBS:-$(nproc)}

if (($# > 0)); then
  files=("$@")
else
  mapfile -t files < <(ls src/*/*.c src/*/*.h)
fi
c_files=()
for f in "${files[@]}"; do [[ $f == *.c ]] && c_files+=("$f"); done

pkgs="yaml-0.1 libpcre2-8 jansson libssl libcrypto libnghttp2"
cflags="-std=c17 -D_GNU_SOURCE -Isrc $(pkg-config --cflags $pkgs 2>/dev/null)"
export cflags

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "lint: $1 not found (scripts/install-deps.sh installs it)" >&2
    exit 2
  fi
}

# "file:line:col: warning: ..." lines, paths relative to the repo, deduplicated
# (a header's finding is reported once per file that includes it).
findings() { sed "s|$PWD/||" | grep -E '^[^ ]+:[0-9]+(:[0-9]+)?: (warning|error|style|performance|portability)' | sort -u; }

declare -A count
total=0

# Runs "$@ FILE" for every C file, $jobs at a time, each into its own file
# (parallel writers to one pipe would interleave lines), then concatenates.
per_file() {
  local tmp
  tmp=$(mktemp -d)
  printf '%s\n' "${c_files[@]}" |
    xargs -P "$jobs" -I{} bash -c 'f=$1; shift; "$@" "$f" >"$0/$(echo "$f" | tr / _).out" 2>&1' "$tmp" {} "$@"
  cat "$tmp"/*.out 2>/dev/null
  rm -rf "$tmp"
}

tidy_one() { clang-tidy --quiet "$1" -- $cflags; }
analyzer_one() { gcc $cflags -O1 -fanalyzer -c -o /dev/null "$1"; }
export -f tidy_one analyzer_one

run_tidy() {
  need clang-tidy
  per_file bash -c 'tidy_one "$0"' | findings >"$out/tidy.txt"
}

run_cppcheck() {
  need cppcheck
  cppcheck --enable=warning,performance,portability --std=c11 --inline-suppr --quiet \
    -D_GNU_SOURCE -I src --suppress=missingIncludeSystem \
    --template='{file}:{line}:{column}: warning: {message} [{id}]' "${c_files[@]}" 2>&1 |
    findings >"$out/cppcheck.txt"
}

run_analyzer() {
  need gcc
  per_file bash -c 'analyzer_one "$0"' | findings >"$out/analyzer.txt"
}

run_format() {
  need clang-format
  clang-format --dry-run -Werror "${files[@]}" 2>&1 | findings >"$out/format.txt"
}

for t in $tools; do
  case $t in
    tidy) run_tidy ;;
    cppcheck) run_cppcheck ;;
    analyzer) run_analyzer ;;
    format) run_format ;;
    *) echo "lint: unknown tool $t (tidy cppcheck analyzer format)" >&2; exit 2 ;;
  esac
  count[$t]=$(wc -l <"$out/$t.txt")
  total=$((total + count[$t]))
done

for t in $tools; do
  n=${count[$t]}
  printf 'lint: %-9s %4d finding%s' "$t" "$n" "$([[ $n == 1 ]] && echo "" || echo s)"
  ((n > 0)) && printf ' (%s)' "$out/$t.txt"
  echo
  if ((n > 0)) && [[ $t != format ]]; then sed 's/^/  /' "$out/$t.txt" | head -50; fi
  if ((n > 0)) && [[ $t == format ]]; then
    cut -d: -f1 "$out/$t.txt" | sort | uniq -c | sort -rn | sed 's/^/  /' | head -20
    echo "  (clang-format -i FILE applies the format; clang-format FILE | diff FILE - shows it)"
  fi
done
((total == 0)) && echo "lint: clean" && exit 0
exit 1
