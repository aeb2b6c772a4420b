"""Canary corpus for the scrub suite (test_scrub_canary.py): 250 requests,
each carrying secrets that exist nowhere else — passwords, API keys, session
cookies, bearer tokens, e-mail addresses, card numbers, SSNs, JWTs, IPv4
addresses — placed where the `default` policy must remove them: headers,
cookies, query strings, JSON (flat, nested, arrays, escaped strings, unicode,
numbers), form bodies, text, gzip/deflate bodies and chunked bodies. A few
are unparseable on purpose (broken JSON, unknown coding, corrupt gzip, nesting
past the walker's bound, multipart under form rules): their copies must be
dropped, not sent.

Also the search that proves a canary absent: raw bytes, percent-encoded (both
forms) and base64 at every alignment, over every view of a record (its JSON
line, the body, the body inflated, JSON strings decoded, percent-decoding).
It is deterministic: the same corpus every run, no randomness.
"""

import base64
import gzip
import hashlib
import hmac
import json
import urllib.parse
import zlib

SCRUB_KEY = "canary-suite-hmac-key-0123456789"

POLICY = {
    "headers": {
        "authorization": "mask",
        "cookie": "remove",
        "x-user-email": {"replace": "hidden@example.com"},
        "x-api-key": {"hash": "env:UMBRA_SCRUB_KEY"},
    },
    "query": {"token": "mask", "email": "hash"},
    "json": ["$.password", "$.user.email", "$..ssn"],
    "form": ["password", "card_number"],
    "detectors": ["email", "credit_card", "jwt", "bearer_token", "us_ssn", "ipv4"],
    # The policy says 2ms. Its budget is wall-clock time, and on a
    # loaded two-core machine under ASan one time slice is longer than that:
    # the copies here would be dropped for being descheduled, not for their
    # content. Budget overruns have their own unit test (scrub_test).
    "budget": "250ms",
    "on_unparseable": "drop",
}


# ---------------------------------------------------------------- canaries

def luhn_digit(body):
    total = 0
    for k, ch in enumerate(reversed(body)):
        d = int(ch)
        if k % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def card(i):
    body = "4%014d" % (731000000000 + i * 7919)
    return body + luhn_digit(body)


def card_spaced(i, sep=" "):
    c = card(i)
    return sep.join(c[k:k + 4] for k in range(0, 16, 4))


def ssn(i):
    return "%03d-%02d-%04d" % (101 + i % 498, 10 + i % 89, 1000 + i)


def email(i, tag="mail"):
    return "canary.%s.%04d@leak%d.example.com" % (tag, i, i % 7)


def ipv4(i):
    """Three-digit last octet: no canary address is a prefix of another."""
    return "10.77.%d.%d" % (i // 100 % 250, i % 100 + 100)


def password(i):
    return "CanaryPw%04dXq" % i


def token(i):
    return "CanaryTok%04dZz" % i


def bearer(i):
    return "cnryBearer%04dabcXYZ789" % i


def api_key(i):
    return "CanaryKey%04dQw" % i


def session(i):
    return "CanarySess%04dPl" % i


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(i):
    """A JWS whose payload and signature are unique to i."""
    head = b64url(b'{"alg":"HS256","typ":"JWT"}')
    payload = b64url(json.dumps({"sub": "canary-jwt-%04d" % i, "n": i}).encode())
    sig = b64url(hmac.new(b"jwt-key", ("%s.%s" % (head, payload)).encode(), hashlib.sha256).digest())
    return "%s.%s.%s" % (head, payload, sig)


def jwt_canaries(i):
    """The token and its unique parts: a leaked payload is a leak."""
    t = jwt(i)
    _, payload, sig = t.split(".")
    return [t, payload, sig]


def hmac_hex(value):
    """What `hash` writes: the first 16 bytes of HMAC-SHA256, hex."""
    return hmac.new(SCRUB_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()[:32]


# ---------------------------------------------------------------- requests

class Req:
    """One request of the corpus. body: the bytes on the wire after any
    Content-Encoding, before any chunked framing."""

    def __init__(self, i, name, method, target, headers, body=b"", chunked=False, expect="scrubbed",
                 canaries=()):
        self.i = i
        self.name = name
        self.rid = "canary-%04d" % i
        self.method = method
        self.target = target
        self.headers = list(headers) + [("X-Request-Id", self.rid)]
        self.body = body
        self.chunked = chunked
        self.expect = expect            # "scrubbed" | "dropped"
        self.canaries = list(canaries)

    def __repr__(self):
        return "<Req %s %s %s>" % (self.rid, self.name, self.expect)


def q(s):
    return urllib.parse.quote(s, safe="")


def jbody(obj):
    return json.dumps(obj).encode()


JSON = ("Content-Type", "application/json")
FORM = ("Content-Type", "application/x-www-form-urlencoded")


def t_get_query(i):
    e1, e2, c, s, ip = email(i, "q"), email(i, "hdr"), card(i), ssn(i), ipv4(i)
    target = "/api/items?q=shoes&token=%s&email=%s&ref=%s&page=2" % (token(i), q(e1), c)
    headers = [("Authorization", "Bearer " + bearer(i)),
               ("Cookie", "session=%s; theme=dark" % session(i)),
               ("X-User-Email", e2), ("X-Api-Key", api_key(i)),
               ("X-Client-Note", "call about %s" % s), ("X-Real-Ip", ip), ("Accept", "application/json")]
    return Req(i, "get-query", "GET", target, headers,
               canaries=[token(i), e1, e2, c, s, ip, bearer(i), session(i), api_key(i)])


def t_json_flat(i):
    body = {"password": password(i), "user": {"email": email(i), "name": "Ann Example"},
            "ssn": ssn(i), "note": "card %s exp 12/29" % card_spaced(i)}
    return Req(i, "json-flat", "POST", "/api/signup", [JSON], jbody(body),
               canaries=[password(i), email(i), ssn(i), card_spaced(i)])


def t_json_nested(i):
    body = {"orders": [{"id": 1, "payment": {"card": card_spaced(i, "-")}},
                       {"id": 2, "contacts": [email(i), {"ssn": ssn(i)}, [[{"deep": {"ssn": ssn(i + 5000)}}]]]}],
            "password": password(i), "meta": {"tags": ["a", "b"], "n": 3.5, "ok": True, "none": None}}
    return Req(i, "json-nested", "POST", "/api/orders", [JSON], jbody(body),
               canaries=[card_spaced(i, "-"), email(i), ssn(i), ssn(i + 5000), password(i)])


def t_json_escaped(i):
    """Escapes inside strings: the canary is not in the raw bytes as such."""
    pw = password(i)
    e = email(i)
    local, domain = e.split("@")
    pw_escaped = pw[:6] + "\\u%04x" % ord(pw[6]) + pw[7:]
    raw = ('{"password": "%s", "contact": "mail: %s\\u0040%s (pref)",'
           ' "quote": "he said \\"%s\\"", "ssn": "%s\\u002d%s"}'
           % (pw_escaped, local, domain, ipv4(i), ssn(i)[:3], ssn(i)[4:]))
    return Req(i, "json-escaped", "POST", "/api/profile", [JSON], raw.encode(),
               canaries=[pw, e, ipv4(i), ssn(i)])


def t_json_unicode(i):
    body = {"naïve": "Zoë — ünïcödé ✓ 😀", "user": {"email": email(i), "名前": "テスト"},
            "message": "Grüße an %s — 😀 %s" % (email(i, "msg"), ipv4(i)),
            "card_number": int(card(i)), "deep": {"a": [{"b": {"ssn": ssn(i)}}]}}
    return Req(i, "json-unicode", "PATCH", "/api/users/me", [("Content-Type", "application/json; charset=utf-8")],
               json.dumps(body, ensure_ascii=i % 2 == 0).encode(),
               canaries=[email(i), email(i, "msg"), ipv4(i), card(i), ssn(i)])


def form_body(i):
    pairs = [("name", "Ann Example"), ("password", password(i)), ("card_number", card_spaced(i)),
             ("email", email(i)), ("comment", "ssn is %s, ip %s" % (ssn(i), ipv4(i))), ("empty", "")]
    return urllib.parse.urlencode(pairs).encode(), [password(i), card_spaced(i), email(i), ssn(i), ipv4(i)]


def t_form(i):
    body, canaries = form_body(i)
    return Req(i, "form", "POST", "/login/submit", [FORM], body, canaries=canaries)


def t_gzip_json(i):
    body = {"password": password(i), "user": {"email": email(i)}, "items": [{"ssn": ssn(i)}],
            "note": "jwt %s" % jwt(i)}
    return Req(i, "gzip-json", "POST", "/api/gz", [JSON, ("Content-Encoding", "gzip")],
               gzip.compress(jbody(body), mtime=0),
               canaries=[password(i), email(i), ssn(i)] + jwt_canaries(i))


def t_chunked_json(i):
    body = {"password": password(i), "list": [email(i), card(i), {"x": {"ssn": ssn(i)}}]}
    return Req(i, "chunked-json", "POST", "/api/chunked", [JSON, ("Transfer-Encoding", "chunked")], jbody(body),
               chunked=True, canaries=[password(i), email(i), card(i), ssn(i)])


def t_chunked_gzip_form(i):
    body, canaries = form_body(i)
    return Req(i, "chunked-gzip-form", "POST", "/form/gz", [FORM, ("Content-Encoding", "gzip"),
                                                           ("Transfer-Encoding", "chunked")],
               gzip.compress(body, mtime=0), chunked=True, canaries=canaries)


def t_text(i):
    text = ("Hello,\ncontact %s or %s.\nAuthorization: Bearer %s\nid token %s\nssn %s, card %s\n"
            % (email(i), ipv4(i), bearer(i), jwt(i), ssn(i), card_spaced(i, "-")))
    return Req(i, "text", "PUT", "/notes/%d" % i, [("Content-Type", "text/plain; charset=utf-8")], text.encode(),
               canaries=[email(i), ipv4(i), bearer(i), ssn(i), card_spaced(i, "-")] + jwt_canaries(i))


def t_json_jwt(i):
    body = {"id_token": jwt(i), "password": password(i), "refresh": "Bearer " + bearer(i)}
    return Req(i, "json-jwt", "POST", "/oauth/token", [JSON, ("X-Id-Token", jwt(i + 7000))], jbody(body),
               canaries=[password(i), bearer(i)] + jwt_canaries(i) + jwt_canaries(i + 7000))


def t_deflate_json(i):
    body = {"user": {"email": email(i)}, "ssn": ssn(i), "password": password(i), "n": int(card(i))}
    return Req(i, "deflate-json", "POST", "/api/deflate", [JSON, ("Content-Encoding", "deflate")],
               zlib.compress(jbody(body)), canaries=[email(i), ssn(i), password(i), card(i)])


def t_json_as_form(i):
    """curl -d '{...}': JSON sent with the form content type."""
    body = {"password": password(i), "user": {"email": email(i)}}
    return Req(i, "json-as-form", "POST", "/api/curl", [FORM], jbody(body), canaries=[password(i), email(i)])


def t_path(i):
    e = email(i, "path")
    target = "/users/%s/profile/%s?x=1&contact=%s" % (q(e) if i % 2 else e, ipv4(i), q(email(i, "qv")))
    return Req(i, "path", "HEAD" if i % 3 == 0 else "GET", target,
               [("X-Forwarded-For", ipv4(i + 3000)), ("Cookie", "sid=%s" % session(i))],
               canaries=[e, ipv4(i), email(i, "qv"), ipv4(i + 3000), session(i)])


TEMPLATES = [t_get_query, t_json_flat, t_json_nested, t_json_escaped, t_json_unicode, t_form, t_gzip_json,
             t_chunked_json, t_chunked_gzip_form, t_text, t_json_jwt, t_deflate_json, t_json_as_form, t_path]


# ---- unparseable: the copy must be dropped

def d_broken_json(i):
    raw = '{"password": "%s", "user": {"email": "%s"' % (password(i), email(i))
    return Req(i, "broken-json", "POST", "/api/broken", [JSON], raw.encode(), expect="dropped",
               canaries=[password(i), email(i)])


def d_brotli(i):
    body = jbody({"password": password(i), "email": email(i)})  # not really brotli: never decoded
    return Req(i, "unknown-coding", "POST", "/api/br", [JSON, ("Content-Encoding", "br")], body,
               expect="dropped", canaries=[password(i), email(i)])


def d_corrupt_gzip(i):
    """Stored (level 0), so the canaries are in the bytes; a bad CRC breaks it."""
    z = bytearray(gzip.compress(jbody({"password": password(i), "ssn": ssn(i)}), compresslevel=0, mtime=0))
    z[-8] ^= 0x5A
    return Req(i, "corrupt-gzip", "POST", "/api/gzbad", [JSON, ("Content-Encoding", "gzip")], bytes(z),
               expect="dropped", canaries=[password(i), ssn(i)])


def d_too_deep(i):
    raw = "[" * 200 + json.dumps({"password": password(i), "e": email(i)}) + "]" * 200
    return Req(i, "too-deep", "POST", "/api/deep", [JSON], raw.encode(), expect="dropped",
               canaries=[password(i), email(i)])


def d_multipart(i):
    raw = ("--xyz\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\n%s\r\n--xyz--\r\n"
           % password(i))
    return Req(i, "multipart", "POST", "/upload", [("Content-Type", "multipart/form-data; boundary=xyz")],
               raw.encode(), expect="dropped", canaries=[password(i)])


DROPPED = [d_broken_json, d_brotli, d_corrupt_gzip, d_too_deep, d_multipart]

N_SCRUBBED = 230
N_DROPPED = 20


def corpus():
    """The requests in sending order: mostly scrubbed ones, every twelfth unparseable."""
    out = []
    i = 0
    s = d = 0
    while s < N_SCRUBBED or d < N_DROPPED:
        if d < N_DROPPED and (i % 12 == 11 or s >= N_SCRUBBED):
            out.append(DROPPED[d % len(DROPPED)](i))
            d += 1
        else:
            out.append(TEMPLATES[s % len(TEMPLATES)](i))
            s += 1
        i += 1
    return out


# ---------------------------------------------------------------- search

def needles(canary):
    """The forms a leaked canary could take: raw, percent-encoded, base64 at
    each of the three alignments (the middle of the encoding is stable)."""
    raw = canary.encode()
    out = {raw, urllib.parse.quote(canary, safe="").encode(), urllib.parse.quote_plus(canary).encode()}
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + raw)
        start = (0, 2, 3)[k]   # the characters that also encode the unknown byte(s) before it
        end = len(enc) - 4      # and the last group, which mixes in what follows
        if end - start >= 8:
            mid = enc[start:end]
            out.add(mid)
            out.add(mid.replace(b"+", b"-").replace(b"/", b"_"))
    return out


def _json_strings(obj, out):
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(str(k))
            _json_strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _json_strings(v, out)
    elif obj is not None:
        out.append(str(obj))


def _decoded(body, coding):
    coding = (coding or "").strip().lower()
    try:
        if coding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if coding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -15)
    except (OSError, zlib.error, EOFError):
        return None
    return body


def views(text, body=b"", coding=None):
    """Every view of one message in which a canary could hide."""
    out = [text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")]
    bodies = [body]
    plain = _decoded(body, coding)
    if plain is not None and plain is not body:
        bodies.append(plain)
    for b in bodies:
        out.append(b)
        s = b.decode("utf-8", "replace")
        out.append(urllib.parse.unquote_plus(s).encode("utf-8", "replace"))
        try:
            strings = []
            _json_strings(json.loads(s), strings)
            out.append("\n".join(strings).encode("utf-8", "replace"))
        except ValueError:
            pass
    out.append(urllib.parse.unquote_plus(out[0].decode("utf-8", "replace")).encode("utf-8", "replace"))
    return out


def find_leaks(canaries, haystacks):
    """[(canary, needle)] of every canary found in any haystack."""
    found = []
    for c in canaries:
        for n in needles(c):
            if any(n in h for h in haystacks):
                found.append((c, n))
                break
    return found


def all_canaries(reqs):
    return sorted({c for r in reqs for c in r.canaries})

