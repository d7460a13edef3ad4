-- wrk script for benchmarks/serving.py: every request POSTs the JSON body held in the file that
-- ARRIVAL_WRK_BODY names, with the API key ARRIVAL_API_KEY holds (when it is set and not empty), and the run ends with one line of JSON (latencies in microseconds) for the
-- benchmark to read, so it need not parse wrk's human-readable units.
local file = assert(io.open(os.getenv("ARRIVAL_WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
local api_key = os.getenv("ARRIVAL_API_KEY")
if api_key and api_key ~= "" then
  wrk.headers["x-api-key"] = api_key
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, '
      .. '"max_us": %.1f, "non_2xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, errors.status, errors.connect, errors.read, errors.write,
    errors.timeout))
end
