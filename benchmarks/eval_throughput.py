"""lm-eval loglikelihood throughput on a small byte-level Llama: batching vs batch size 1.

    python benchmarks/eval_throughput.py [--docs 16] [--batch-sizes 1,4,8,16,32] [--threads 1]

The requests are those of polyprune's offline tasks (polyprune_cont_en and
polyprune_langid_zh, `--docs` documents each, 4 choices a document); only
`HFLM.loglikelihood` is timed, not task loading. The model is the demo's shape
(hidden 256, 4 blocks, FFN 672, byte tokenizer), randomly initialised: speed does
not depend on the weights. The last column checks that batching changes the
log-likelihoods only by float noise.
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

from tasks.evaluation.lmeval import task_manager

TASKS = ["polyprune_cont_en", "polyprune_langid_zh"]


def small_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=384, hidden_size=256, intermediate_size=672, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return LlamaForCausalLM(config).eval()


def requests(docs: int) -> list:
    loaded = task_manager().load(TASKS)
    out = []
    for task in loaded["tasks"].values():
        task.build_all_requests(limit=docs)
        out += task.instances
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=16, help="documents per task")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lm_eval.models.huggingface import HFLM

    model, tokenizer = small_model(), ByT5Tokenizer()
    reqs = requests(args.docs)
    n_tokens = sum(len(tokenizer(c + x, add_special_tokens=False).input_ids) for c, x in (r.args for r in reqs))
    print(f"{len(reqs)} loglikelihood requests, {n_tokens} tokens; torch threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| batch size | requests/s | tokens/s | seconds | speed-up | max abs diff of loglik vs bs 1 |")
    print("|---|---|---|---|---|---|")
    base = base_s = None
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=bs)
        best, result = float("inf"), None
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = lm.loglikelihood(reqs, disable_tqdm=True)
            best = min(best, time.perf_counter() - start)
        lls = [ll for ll, _ in result]
        base, base_s = (lls, best) if base is None else (base, base_s)
        diff = max(abs(a - b) for a, b in zip(lls, base))
        print(f"| {bs} | {len(reqs) / best:.0f} | {n_tokens / best:.0f} | {best:.2f} | {base_s / best:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
