-- wrk_report.lua — prints one run's results as a single JSON line prefixed
-- with "BENCHJSON ", so bench.py never scrapes wrk's human text.
-- Only done() is defined: a request()/response() hook would run Lua on every
-- request and slow wrk down, which shares a core with the backend. With
-- BENCH_PACE_MS set, delay() holds each connection that long between an
-- answer and its next request: an offered load below saturation, where p99
-- is the latency a proxy adds rather than queueing.

local pace = tonumber(os.getenv("BENCH_PACE_MS") or "")
if pace and pace > 0 then
  delay = function() return pace end
end

local function num(x)
  -- wrk hands back NaN/inf for empty histograms; JSON has neither.
  if x ~= x or x == math.huge or x == -math.huge then return 0 end
  return x
end

done = function(summary, latency, requests)
  local e = summary.errors
  local n = summary.requests
  local function pct(q)
    if n == 0 then return 0 end
    return num(latency:percentile(q))
  end
  local min, max, mean, stdev = 0, 0, 0, 0
  if n > 0 then
    min, max = num(latency.min), num(latency.max)
    mean, stdev = num(latency.mean), num(latency.stdev)
  end
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p99_9":%d}}\n',
    n, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    min, mean, stdev, max,
    pct(50), pct(90), pct(99), pct(99.9)))
end
