#!/usr/bin/env bash
# make-demo-certs.sh — (re)makes the DEMO-ONLY certificates that
# examples/tls.yaml points at: a demo CA, two server certificates (chosen by
# SNI), a client certificate for curl and one for umbra itself (mTLS to a
# shadow). Their private keys are public, in git: never use them for anything
# but trying umbra on loopback.
#
#   bash examples/tls/make-demo-certs.sh [DIR]     # DIR defaults to examples/tls
#
# Keys are ECDSA P-256; certificates last 10 years so the committed set does
# not expire under the tests that load examples/tls.yaml. The CA's key is
# deleted once the set is signed: to change anything, run the script again.
set -euo pipefail

dir=${1:-$(dirname "$0")}
mkdir -p "$dir"
cd "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
days=3650
org="/O=umbra DEMO ONLY - do not trust"

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# The CA: signs everything below; its key never leaves $work.
newkey "$work/ca.key"
openssl req -x509 -new -key "$work/ca.key" -out demo-ca.pem -days "$days" \
    -subj "$org/CN=umbra demo CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"

# issue NAME CN USAGE SAN: NAME.key and NAME.pem signed by the demo CA.
serial=$(date +%s)
issue() {
    local name=$1 cn=$2 usage=$3 san=$4
    newkey "$name.key"
    openssl req -new -key "$name.key" -out "$work/$name.csr" -subj "$org/CN=$cn"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$usage"
        echo "subjectKeyIdentifier=hash"
        echo "authorityKeyIdentifier=keyid:always" # strict verifiers (Python 3.13) want it
        [[ -n $san ]] && echo "subjectAltName=$san"
    } >"$work/$name.ext"
    serial=$((serial + 1))
    openssl x509 -req -in "$work/$name.csr" -CA demo-ca.pem -CAkey "$work/ca.key" \
        -set_serial "$serial" -days "$days" -sha256 -extfile "$work/$name.ext" \
        -out "$name.pem" 2>/dev/null
    chmod 644 "$name.key" # demo keys, public anyway; git keeps no other mode
}

issue demo-localhost localhost serverAuth "DNS:localhost,IP:127.0.0.1,IP:::1"
issue demo-api api.demo.test serverAuth "DNS:api.demo.test,DNS:*.api.demo.test"
issue demo-client demo-client clientAuth ""
issue demo-umbra umbra-demo-mirror clientAuth ""

echo "demo certificates (DEMO ONLY, never trust them) written to $(pwd):"
ls -1 demo-*.pem demo-*.key
