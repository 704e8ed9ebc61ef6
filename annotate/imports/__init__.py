"""Data in: prompts and existing preference pairs from JSONL, CSV, Parquet or a `datasets`
directory (one module per step: reading, rows, writing, jobs; errors).

Everything is read and validated before anything is written. Each bad row is reported with
its line (JSONL, CSV) or row number (a dataset) and what is wrong with it; the whole import is
refused when any row is bad, unless the caller asks for the valid rows only. Then one
transaction writes them all, or nothing. A file is read as a stream, twice (the checks, then
the writes, a chunk at a time), each row bounded before it becomes Python objects: what an
import holds follows its chunk and its longest row, not the file.

Prompt rows: {"prompt": "text" | [messages]} (or "messages", or "text"), with optional "tags"
(a list, or comma-separated in CSV), "id", "split" (train / eval) and "source".

Pair rows, in the layouts TRL and common public sets use:
- conversational: {"prompt": [messages], "chosen": [assistant message], "rejected": [...]}
- standard: {"prompt": "text", "chosen": "text", "rejected": "text"}
- implicit prompt: {"chosen": [whole conversation], "rejected": [whole conversation]}, the
  prompt being the turns both share and the answers their last assistant turns.
An imported pair becomes a prompt, two responses of the policy "imported", a completed
comparison and its preference pair (agreement 1, no judgments of ours).
"""
