"""Held-out bits per byte of the demo model vs a byte-unigram baseline, per target language.

    python benchmarks/demo_model_quality.py [--seqlen 128]

Uses the shipped demo model (tasks/demo_weights); the test split, which neither training nor any choice saw.
"""

import argparse
import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.data import builtin
from tasks.demo_model import DemoConfig, demo_model_path, target_probabilities
from tasks.demo_quality import bits_per_byte, unigram_bits_per_byte


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlen", type=int, default=128)
    args = parser.parse_args()

    path = demo_model_path(DemoConfig())
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    training = json.loads((path / "training.json").read_text())
    print(f"model: {path}\ntraining: {training['time_s']:.0f} s, final loss {training['losses'][-1]:.3f}\n")
    share = target_probabilities()
    print("| lang | share of target rows | demo model bits/byte | unigram bits/byte | gain |\n|---|---|---|---|---|")
    for lang in builtin.TARGETS:
        held_out = builtin.documents(lang, "test")
        model_bpb = bits_per_byte(model, tokenizer, held_out, seqlen=args.seqlen)
        unigram = unigram_bits_per_byte(builtin.documents(lang, "calib"), held_out)
        print(f"| {lang} | {100 * share[lang]:.1f}% | {model_bpb:.2f} | {unigram:.2f} | {unigram - model_bpb:.2f} |")


if __name__ == "__main__":
    main()
