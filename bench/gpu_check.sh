#!/usr/bin/env bash
# GPU smoke check of the engine, under 10 minutes on one GPU:
#   a QLoRA DPO run (NF4 double quantisation, bf16 compute, gradient checkpointing, the lean
#   log-probability head) that is killed with SIGKILL once its first checkpoint is complete,
#   then started again: it must resume from that checkpoint and finish. Then the trained
#   adapter generates: with vLLM where it is installed (an engine in this process), else with
#   transformers. Prints the resumed step, the steps, peak GPU memory against the pre-flight
#   estimate, training and generation tokens/s, and exits non-zero when a check fails.
#
# Usage (repository root, on a machine with a CUDA GPU and the project's Python packages):
#   bash bench/gpu_check.sh [STEPS]
# The model is data/models/smollm2-135m-instruct when it is there (make models); otherwise a
# randomly initialised Llama of SmolLM2-135M's shape is built with the tokenizer found under
# $TOKENIZER_DIR (default data/models/smollm2-135m-instruct), so only the tokenizer files need
# to travel to the GPU machine. Missing packages (trl, bitsandbytes, datasets, ...) can be
# installed from wheels first: WHEELS=.whl bash bench/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-40}"
work="${GPU_CHECK_DIR:-/tmp/prefloop-gpu-check}"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -n "${WHEELS:-}" ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
rm -rf "$work" && mkdir -p "$work"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

"$python" - "$work" "$steps" <<'EOF'
import json, os, sys
from pathlib import Path
import torch
work, steps = Path(sys.argv[1]), int(sys.argv[2])
assert torch.cuda.is_available() or os.environ.get("GPU_CHECK_ON_CPU"), "no CUDA GPU visible"
packaged = Path("data/models/smollm2-135m-instruct")
if os.environ.get("GPU_CHECK_MODEL"):  # e.g. a tiny model for a dry run of this script on a CPU
    model = os.environ["GPU_CHECK_MODEL"]
elif (packaged / "config.json").is_file():
    model = str(packaged.resolve())
else:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(os.environ.get("TOKENIZER_DIR", str(packaged)))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = str(work / "model")
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(model, safe_serialization=True)
    tokenizer.save_pretrained(model)
batch = 8
pairs = []
for i in range(steps * batch // 2):  # 2 epochs of `steps / 2` steps each
    pairs.append({"prompt": f"Give me one tip about sleeping better ({i}).",
                  "chosen": "Go to bed at the same time every night. " * 4,
                  "rejected": "Sleep is a complex topic with many aspects to consider. " * 12})
with open(work / "pairs.jsonl", "w") as f:
    for p in pairs:
        f.write(json.dumps(p) + "\n")
(work / "config.json").write_text(json.dumps({"examples": str(work / "pairs.jsonl"),
    "training": {"model": model, "models_dir": "data/models", "output_dir": str(work / "run"),
                 "epochs": 2, "batch_size": batch, "gradient_accumulation_steps": 1,
                 "max_length": 384, "lora_r": 16,
                 "lora_alpha": 32, "checkpoint_steps": 5, "quantize_4bit": True}}))
print(f"model {model}; {len(pairs)} pairs, batch {batch}, {steps} steps")
EOF

# First attempt: killed (SIGKILL, as a lost worker) once a checkpoint is complete. Python is
# started directly in the background, so $! is its pid (a shell function's $! would be a
# subshell, and killing that leaves the training running).
"$python" -m alignment.engine.train "$work/config.json" > "$work/first.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  if ls "$work"/run/checkpoints/*/complete.json >/dev/null 2>&1; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "first attempt ended before a checkpoint"; tail -20 "$work/first.log"; exit 1; fi
  sleep 0.5
done
sleep 2
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
killed_at=$(grep -c '^step ' "$work/first.log" || true)
echo "first attempt killed after $killed_at steps; complete checkpoints: $(ls "$work/run/checkpoints")"
# Second attempt: resumes from the newest complete checkpoint.
"$python" -m alignment.engine.train "$work/config.json" > "$work/second.log" 2>&1 \
  || { tail -30 "$work/second.log"; exit 1; }
"$python" - "$work" "$steps" <<'EOF'
import json, sys
from pathlib import Path
work, steps = Path(sys.argv[1]), int(sys.argv[2])
lines = (work / "second.log").read_text().strip().splitlines()
result = json.loads(lines[-1])
points = [dict(zip(l.split()[0::2], l.split()[1::2])) for l in lines if l.startswith("step ")]
first_step = int(points[0]["step"].split("/")[0])
print(f"resumed from step {result['resumed_from_step']} (first step reported: {first_step}), "
      f"finished at step {result['steps']} of {steps}")
print(f"peak GPU memory {max(float(p['memory_mb']) for p in points):.0f} MB; "
      f"tokens/s {points[-1]['tokens/s']} (the resumed attempt); final loss {points[-1]['loss']}")
assert result["resumed_from_step"], "the second attempt did not resume"
assert result["steps"] == steps, result["steps"]
assert first_step == result["resumed_from_step"] + 1
peak = max(float(p["memory_mb"]) for p in points)
if result.get("memory_estimate_mb"):
    print(f"pre-flight estimate {result['memory_estimate_mb']} MB against {peak:.0f} MB measured")
EOF

"$python" - "$work" <<'EOF'
import json, sys, time
from pathlib import Path
import torch
from alignment.engine.generation import GenerationConfig, generate
work = Path(sys.argv[1])
config = json.loads((work / "config.json").read_text())["training"]
prompts = [[{"role": "user", "content": f"Give me one tip about sleeping better ({i})."}]
           for i in range(64)]
generation = GenerationConfig(model=config["model"], models_dir="data/models",
    adapter=str(work / "run" / "adapter"), samples_per_prompt=4, max_new_tokens=128,
    batch_size=64, seed=0)
try:
    import vllm  # noqa: F401
    from alignment.engine.vllm_backend import generate_vllm as sample
    backend = "vllm (in-process engine)"
except ImportError:
    sample, backend = generate, "transformers (vLLM not installed)"
if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
started = time.monotonic()
samples = sample(generation, prompts)
elapsed = time.monotonic() - started
tokens = sum(s.completion_tokens for s in samples)
assert len(samples) == 64 * 4 and all(s.text for s in samples), "empty samples"
memory = (f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MB peak allocated by torch"
          if torch.cuda.is_available() else "no GPU")
print(f"generation with {backend}: {len(samples)} samples, {tokens} tokens in {elapsed:.1f} s "
      f"= {tokens / elapsed:.0f} tokens/s (engine start included); {memory}")
print("gpu_check: OK")
EOF
