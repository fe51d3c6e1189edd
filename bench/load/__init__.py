"""Load benchmarks: processes under test, SIPp load steps, our own latency client."""
