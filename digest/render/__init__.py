"""Rendering emails from templates/email/<name>/: the package's modules, in reading order.

- `filters`: the small text helpers every template prints through (Jinja filters).
- `content`: the plain data a digest shows (`PaperCard`, `DigestItem`, `DigestContext`).
- `plain`: the environment and the plain path, Jinja → MJML → HTML plus the text part
  (`render_email`, `render_digest`).
- `day`: `DayRenderer`, the same digests fast: compiled once per day, filled per subscriber.
- `slots`: which template variable each of the day renderer's placeholders stands for, checked
  against what the templates read.
"""
