"""What every layer shares, and nothing above it: the settings read once from the environment
(`config`), the error codes clients see (`errors`), log set-up, the job spec types passed down to
ComfyUI's side (`job_spec`), base64 and JSON of large payloads (`codec`, `json_text`), work off the
gevent hub (`offload`), background threads (`background`), RUN_DIR's layout (`run_dir`), the
drain state (`drain`) and the work in hand a drain waits for (`in_hand`).

Guarantees: nothing here reads a job's content into a log line; `config` is the only reader of
`os.environ`; `run_dir` and `drain` are standard library only (PID 1 and the launcher use them).
"""
