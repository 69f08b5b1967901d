"""Writes adapters/configs/tiny_tokenizer: a byte-level CLIP BPE vocabulary with no merges.

514 tokens (256 bytes, the same with an end-of-word mark, start and end tokens): enough for the
pack's toy models and tests, which must run with no download and no ComfyUI install.
"""
import json
from pathlib import Path


def byte_alphabet():
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def main(out=Path(__file__).resolve().parent.parent / "adapters" / "configs" / "tiny_tokenizer"):
    out.mkdir(parents=True, exist_ok=True)
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n")
    print(f"wrote {len(tokens)} tokens to {out}")


if __name__ == "__main__":
    main()
