"""Build the quickstart's tiny model locally: tokenizer, Llama-style LM, task data, SFT warm-up.

Nothing is fetched from a hub. The task is integer addition ("123+45=" -> "168"),
checked by the `arithmetic` verifier. The SFT warm-up stops early (at a target
accuracy on a validation split) so the policy starts RL with room to learn; the result is a normal Hugging Face
checkpoint (`save_pretrained` layout) reused while its spec is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import torch

from rollout.data import write_jsonl
from trainer import env_tasks
from trainer.batches import pad_rows

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list("0123456789+-*=# ")
SPEC_FILE = "tandem_bootstrap.json"
# Bumped whenever make_task draws different problems for the same spec and seed, so a
# checkpoint (and its data files) built by an older draw is rebuilt, not reused.
# 2: split on unordered pairs {a, b} (before, b+a could train while a+b was held out).
TASK_VERSION = 2


def build_tokenizer():
    """A character-level fast tokenizer that adds <s> in front of every prompt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()  # characters join back without spaces
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        padding_side="left", clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer, spec):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=4 * spec.hidden_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads, max_position_embeddings=64, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def save_random_model(path: str | Path, config, dtype=None) -> Path:
    """A randomly initialised causal LM of any transformers `config` (e.g. a Qwen2 shape at its
    real vocabulary) saved with a word-level tokenizer that covers every id ("t0", "t1", ...),
    so engines can decode whatever the model samples. For GPU checks and benchmarks: built
    from a config, nothing fetched."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t3"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="t1", eos_token="t2", pad_token="t0",
                                  unk_token="t3", padding_side="left")
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 0
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_task(spec, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Disjoint (train, eval, warm-up validation) addition problems with up to max_digits digits.

    The supervised warm-up trains on the train prompts (as RL does later); its stopping
    rule reads the validation prompts; the eval prompts are used by nothing but evaluation.
    The split is drawn over unordered operand pairs {a, b}: "a+b=" and its commuted twin
    "b+a=" (the same answer) never land in different splits, so no held-out prompt is a
    train prompt written the other way round. A split whose last pair would overflow its
    size takes one order of that pair; the other order then goes nowhere.
    """
    hi = 10**spec.max_digits
    sizes = (spec.num_train_prompts, spec.num_eval_prompts, spec.sft_val_prompts)
    if sum(sizes) > hi * hi:
        raise ValueError(f"bootstrap asks for {sum(sizes)} distinct problems; {spec.max_digits}-digit "
                         f"addition has only {hi * hi}")
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(hi) for b in range(a, hi)]
    rng.shuffle(pairs)
    left = iter(pairs)
    splits = []
    for size in sizes:
        problems: list[tuple[int, int]] = []
        for a, b in left:
            problems += [(a, b), (b, a)] if a != b and len(problems) + 1 < size else [(a, b)]
            if len(problems) == size:
                break
        else:
            raise ValueError(f"bootstrap asks for {sum(sizes)} problems in {len(sizes)} splits that keep "
                             f"a+b and b+a together; {spec.max_digits}-digit addition cannot fill them")
        rng.shuffle(problems)  # twins are not neighbours in the files
        # hint: the sum but its last digit, a partial solution for algorithm.hint_rescue ("" for one digit)
        splits.append([{"prompt": f"{a}+{b}=", "answer": str(a + b), "hint": str(a + b)[:-1]} for a, b in problems])
    return splits[0], splits[1], splits[2]


def arithmetic_pairs(rows: list[dict], seed: int) -> list[dict]:
    """Synthetic preferences for the quickstart's addition task: chosen is the right sum,
    rejected a wrong sum of the wrong length (its last digit dropped, or a random digit
    appended). Telling them apart needs the operands (how long can their sum be?) but no
    digit-by-digit addition, which a tiny model learns in a few hundred steps. Near misses
    (a wrong last digit) stayed at chance for 1500 steps of the 64-wide test model."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        right = str(int(row["answer"]))
        drop = len(right) > 1 and rng.random() < 0.5
        wrong = right[:-1] if drop else right + str(rng.randint(0, 9))
        out.append({"prompt": row["prompt"], "chosen": right, "rejected": wrong})
    return out


def write_arithmetic_pairs(data_dir: Path, seed: int) -> None:
    """pairs_train.jsonl / pairs_eval.jsonl from the bootstrap's train / eval prompts, once."""
    for split in ("train", "eval"):
        out = data_dir / f"pairs_{split}.jsonl"
        if not out.is_file():
            rows = [json.loads(line) for line in (data_dir / f"{split}.jsonl").read_text().splitlines() if line]
            write_jsonl(out, arithmetic_pairs(rows, seed + (split == "eval")))


def _examples(tokenizer, rows: list[dict], rng: random.Random, spec) -> list[tuple[list[int], list[float]]]:
    """(ids, trains) per row: prompt + answer + eos (the answer and eos train); the tool task's
    are trajectories (trainer/tool_task.py)."""
    if spec.task != "addition":
        return env_tasks.examples(tokenizer, rows, rng, spec)
    out = []
    for row in rows:
        p = tokenizer(row["prompt"])["input_ids"]
        r = tokenizer(row["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((p + r, [0.0] * len(p) + [1.0] * len(r)))
    return out


def _sft_batch(tokenizer, examples: list[tuple[list[int], list[float]]]):
    """Right-padded rows; labels only where the example trains."""
    ids, attn, (mask,) = pad_rows([e[0] for e in examples], tokenizer.pad_token_id, [e[1] for e in examples])
    ids, attn = torch.from_numpy(ids), torch.from_numpy(attn)
    return ids, attn, torch.where(torch.from_numpy(mask) == 1, ids, torch.tensor(-100))


def sft(model, tokenizer, train: list[dict], val: list[dict], spec, seed: int, log=print) -> tuple[int, float]:
    """Supervised warm-up, stopped once greedy validation accuracy reaches the target.

    Learning addition is a sharp phase transition for this model (about 2% -> 80% within
    150 steps, at a step that moves with the seed), so a fixed step count would start RL
    anywhere from 5% to 80%. Stopping on a validation split makes the start reproducible (the
    multi-turn tasks': trainer/env_tasks.py). Returns (steps taken,
    validation accuracy).
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.sft_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    step, acc = 0, 0.0
    for step in range(1, spec.sft_max_steps + 1):
        model.train()
        ids, attn, labels = _sft_batch(tokenizer, _examples(tokenizer, rng.sample(train, spec.sft_batch_size), rng, spec))
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % spec.sft_check_every == 0:
            model.eval()
            acc = _validation_accuracy(model, tokenizer, val, spec)
            log(f"  sft step {step:4d} loss {loss.item():.3f} validation accuracy {acc:.1%}")
            if acc >= spec.sft_target_accuracy:
                break
    model.eval()
    return step, acc


def _validation_accuracy(model, tokenizer, rows: list[dict], spec) -> float:
    if spec.task != "addition":
        return env_tasks.validation_accuracy(model, tokenizer, rows, spec)
    return greedy_accuracy(model, tokenizer, rows)


@torch.no_grad()
def greedy_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int = 8) -> float:
    from reward.verifiers import arithmetic

    enc = tokenizer([r["prompt"] for r in rows], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(arithmetic(t, r["answer"]) for t, r in zip(texts, rows)) / len(rows)


def spec_hash(spec, seed: int) -> str:
    blob = json.dumps({"spec": spec.model_dump(), "seed": seed, "chars": CHARS, "task": TASK_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_tiny_model(path: str | Path, spec, seed: int = 0, log=print) -> dict:
    """Build (or reuse) the checkpoint at `path`; returns the bootstrap record."""
    path = Path(path)
    marker = path / SPEC_FILE
    want = spec_hash(spec, seed)
    if marker.is_file():
        record = json.loads(marker.read_text())
        if record.get("spec_hash") == want:
            return record
        log(f"bootstrap spec changed; rebuilding {path}")
    t0 = time.time()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, spec)
    train, evals, val = (make_task if spec.task == "addition" else env_tasks.make_rows)(spec, seed)
    log(f"bootstrap: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter Llama, supervised "
        f"warm-up on the {spec.task} task until validation accuracy >= "
        f"{spec.sft_target_accuracy:.0%}")
    steps, val_acc = sft(model, tokenizer, train, val, spec, seed, log=log)
    acc = _validation_accuracy(model, tokenizer, evals, spec)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    for stale in (path / "data").glob("pairs_*.jsonl"):  # derived from an older train / eval split
        stale.unlink()
    write_jsonl(path / "data" / "train.jsonl", train)
    write_jsonl(path / "data" / "eval.jsonl", evals)
    record = {"spec_hash": want, "sft_steps": steps, "sft_val_accuracy": val_acc, "sft_eval_accuracy": acc,
              "build_s": round(time.time() - t0, 1)}
    marker.write_text(json.dumps(record, indent=2))  # written last: a half-built dir is rebuilt
    what = "greedy held-out accuracy" if spec.task == "addition" else "its stopping metric on held-out rows"
    log(f"bootstrap: saved {path} in {record['build_s']} s; {what} {acc:.1%}")
    return record


def main(argv: list[str] | None = None) -> int:
    """python -m trainer.bootstrap IN.jsonl OUT.jsonl [SEED]: {prompt, answer} rows ->
    synthetic {prompt, chosen, rejected} pairs (see arithmetic_pairs)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print(main.__doc__, file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in Path(args[0]).read_text().splitlines() if line.strip()]
    write_jsonl(args[1], arithmetic_pairs(rows, int(args[2]) if len(args) == 3 else 0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
