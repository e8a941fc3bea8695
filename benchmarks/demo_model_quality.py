"""Held-out bits per byte of the demo model vs a byte-unigram baseline, per target language.

    python benchmarks/demo_model_quality.py [--seqlen 128]

Trains the demo model if it is not cached yet (a few minutes on 2 cores).
"""

import argparse
import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.data import builtin
from tasks.demo_model import DemoConfig, bits_per_byte, demo_model_path, unigram_bits_per_byte


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlen", type=int, default=128)
    args = parser.parse_args()

    path = demo_model_path(DemoConfig())
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    training = json.loads((path / "training.json").read_text())
    print(f"model: {path}\ntraining: {training['time_s']:.0f} s, final loss {training['losses'][-1]:.3f}\n")
    print("| lang | demo model bits/byte | unigram bits/byte | gain |\n|---|---|---|---|")
    for lang in builtin.TARGETS:
        held_out = builtin.documents(lang, "test")
        model_bpb = bits_per_byte(model, tokenizer, held_out, seqlen=args.seqlen)
        unigram = unigram_bits_per_byte(builtin.documents(lang, "calib"), held_out)
        print(f"| {lang} | {model_bpb:.2f} | {unigram:.2f} | {unigram - model_bpb:.2f} |")


if __name__ == "__main__":
    main()
