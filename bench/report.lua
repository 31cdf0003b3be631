-- wrk reporter: one machine-readable line at the end of a run.
-- WRK requests duration_us connect read write status timeout p50_us p99_us max_us p90_us p999_us
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %d %d %d %d %d %d %d %.1f %.1f %.1f %.1f %.1f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max,
    latency:percentile(90), latency:percentile(99.9)))
end
