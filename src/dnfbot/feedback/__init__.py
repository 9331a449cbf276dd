"""The players teach the bot: every served answer is logged with its trace, players rate it (👍/👎) or write the
right answer, and the log becomes training and evaluation data.

- store.py   the answer log (SQLite under $DNFBOT_HOME by default, or PostgreSQL) and its background writer
- trace.py   what one answer leaves in the log; the per-request capture of the retrieval trace
- export.py  `dnfbot feedback export --as rm|dpo|sft|pairs|eval`
- stats.py   `dnfbot feedback stats`
- cli.py     the verbs; bench.py `dnfbot bench feedback`

What is stored, per answer: the question, the conversation turn (and a random per-session conversation id in chat
and on the web page), the retrieval query after rewriting, the hits with scores and categories, the coverage, the
cited sources and which answer sentence came from which, the back end and model, the answer, whether it answered,
and the latency. Per feedback: the answer id, up/down, the correction and comment the player wrote, the channel
and the time. Never stored: IP addresses, user names, API keys, request headers.
"""
