"""A 200-pair round on this CPU, end to end: generation, judging, training, head-to-head.

python bench/round_cpu.py [--pairs 200] [--epochs 1] [--eval-prompts 8] [-- loop_check options]

Runs `manage.py loop_check` (the services a worker runs, in one process, on a fresh SQLite
database in a temporary data directory) with 4 samples per training prompt, so each prompt
gives 2 on-policy pairs, and every pair judged (rule "shorter", both-truncated pairs kept):
--pairs / 2 training prompts. Prints loop_check's report (phase times, tokens/s, steps, peak
RSS, the head-to-head) and the round's total wall time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--eval-prompts", type=int, default=8)
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "data" / "models"))
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as data:
        env = {
            **os.environ,
            "DEBUG": "1",
            "PREFLOOP_DATA_DIR": data,
            "PREFLOOP_MODELS_DIR": args.models_dir,
            "HF_HUB_OFFLINE": "1",
        }
        env.pop("DATABASE_URL", None)
        manage = [sys.executable, str(REPO_ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], check=True, env=env)
        command = [
            *manage,
            "loop_check",
            "--rule",
            "shorter",
            "--train-prompts",
            str(args.pairs // 2),
            "--samples-per-prompt",
            "4",
            "--judge-both-truncated",
            "--eval-prompts",
            str(args.eval_prompts),
            "--train-epochs",
            str(args.epochs),
            *[part for part in extra if part != "--"],
        ]
        print("$ " + " ".join(command[1:]), flush=True)
        started = time.monotonic()
        subprocess.run(command, check=True, env=env)
        print(f"round wall time (process start to exit): {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
