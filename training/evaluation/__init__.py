"""``finechat eval``: baseline vs improved as a reproducible, measured report.

Latency (load, TTFT, prefill and decode speed, peak RSS) from the serving engine in one child
process per trial; quality from held-out perplexity, a position-swapped judge and the web
arena's votes; a Markdown report with plots and the raw JSON.
"""
